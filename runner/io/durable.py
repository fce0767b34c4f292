"""Durable, atomic file commits: write a temp file unique to the writer, fsync it, move it into place.

On a local disk the temp file is fsynced before the rename and the directory after it, so a committed
file survives a power loss or a lost node, not only a killed process; a commit that must not replace
an existing file uses a hard link, which fails atomically when the name exists. On object stores a
move is already atomic and durable once it returns.
"""

from __future__ import annotations

import os
import uuid

import pyarrow.fs as pafs


def atomic_write(fs: pafs.FileSystem, root: str, name: str, write, replace: bool = True) -> bool:
    """Call ``write(temp_path)`` then rename the temp file onto ``name``; durable on a local disk.

    With ``replace=False`` an existing ``name`` is never replaced (returns False, temp removed): on a
    local disk by a hard link, which fails atomically when the name exists; elsewhere by a check
    before the move, which the directory's lease makes safe (one writer).
    """
    temp = f"{root}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
    write(temp)
    final = f"{root}/{name}"
    if not isinstance(fs, pafs.LocalFileSystem):
        if not replace and fs.get_file_info(final).type != pafs.FileType.NotFound:
            fs.delete_file(temp)
            return False
        fs.move(temp, final)
        return True
    _fsync_file(temp)
    if replace:
        os.replace(temp, final)
    else:
        try:
            os.link(temp, final)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: check, then rename (the lease keeps one writer)
            if os.path.exists(final):
                return False
            os.rename(temp, final)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
    _fsync_dir(root)
    return True


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        _fsync_file(path)
    except OSError:  # some filesystems cannot fsync a directory; the rename is still atomic
        pass
