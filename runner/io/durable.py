"""Durable, atomic file commits: write a temp file unique to the writer, fsync it, move it into place.

On a local disk the temp file is fsynced before the rename and the directory after it, so a committed
file survives a power loss or a lost node, not only a killed process; a commit that must not replace
an existing file uses a hard link, which fails atomically when the name exists. On object stores a
move is already atomic and durable once it returns.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable

import pyarrow as pa
import pyarrow.fs as pafs

from runner.errors import OutputError

log = logging.getLogger(__name__)

_ATTEMPTS = 3  # writes of one commit whose temp file someone else removed while the lease stayed ours


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it; plain paths are local, URIs go by scheme."""
    if "://" in path:
        try:
            return pafs.FileSystem.from_uri(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise OutputError(f"output.path: cannot open {path}: {err}") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def atomic_write(
    fs: pafs.FileSystem, root: str, name: str, write, replace: bool = True, fence: Callable | None = None
) -> bool:
    """Call ``write(temp_path)`` then rename the temp file onto ``name``; durable on a local disk.

    With ``replace=False`` an existing ``name`` is never replaced (returns False, temp removed): on a
    local disk by a hard link, which fails atomically when the name exists; elsewhere by a check
    before the move, which the directory's lease makes safe (one writer).

    ``fence`` (the lease's check) runs after the slow part (writing and fsyncing the temp file), right
    before the link or rename: if it raises, the temp file is removed and nothing is committed. A
    writer that freezes between that check and the link cannot commit after a takeover either: the
    new holder removes every temp file when it takes the lease (`runner.io.jobdir.JobDir.acquire`), so
    the late link finds no file and the writer stops with `LeaseLost`. The fence runs once more right
    after the link, so a writer learns at once that its lease moved on; it then raises and never
    undoes the commit: once a file is visible under its final name only the current holder may remove
    it (the new holder may already have counted it; whether it counts is `runner.io.catalogue`'s, by
    the lease's seal and the part's generation). Object stores have no links: there the window between
    the check and the move stays open (one request long).
    """
    local = isinstance(fs, pafs.LocalFileSystem)
    for attempt in range(_ATTEMPTS):
        temp = f"{root}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            write(temp)
            if local:
                _fsync_file(temp)
            if fence is not None:
                fence()
            if not _move(fs, temp, f"{root}/{name}", replace, local):
                return False
            break
        except FileNotFoundError:  # our temp file is gone: a new lease holder cleared it (LeaseLost)
            if fence is None or attempt == _ATTEMPTS - 1:
                raise
            fence()
            # Still ours: a superseded driver cleared it (it froze while taking the lease, then went
            # on); write it again.
        finally:
            _remove_own(fs, temp, local)
    if local:
        _fsync_dir(root)
    if fence is not None:
        fence()  # LeaseLost now leaves the file where it is: see above
    return True


def _move(fs: pafs.FileSystem, temp: str, final: str, replace: bool, local: bool) -> bool:
    if local:
        return _move_local(temp, final, replace)
    if not replace and fs.get_file_info(final).type != pafs.FileType.NotFound:
        return False
    fs.move(temp, final)
    return True


def _remove_own(fs: pafs.FileSystem, temp: str, local: bool) -> None:
    """Remove this writer's temp name if it is still there (its name is unique to this writer; after
    a hard link it is the file's second name)."""
    try:
        if local:
            os.unlink(temp)
        else:
            fs.delete_file(temp)
    except FileNotFoundError:
        pass
    except OSError as err:  # a leftover dot-name: readers skip it, the next holder removes it
        log.warning("could not remove temp file %s: %s", temp, err)


def _move_local(temp: str, final: str, replace: bool) -> bool:
    if replace:
        os.replace(temp, final)
        return True
    try:
        os.link(temp, final)
    except FileExistsError:
        return False
    except OSError as err:  # a filesystem without hard links: check, then rename (the lease keeps one writer)
        if isinstance(err, FileNotFoundError):
            raise
        if os.path.exists(final):
            return False
        os.rename(temp, final)
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
