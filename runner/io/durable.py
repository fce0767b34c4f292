"""Durable, atomic file commits: write a temp file unique to the writer, fsync it, move it into place.

On a local disk the temp file is fsynced before the rename and the directory after it, so a committed
file survives a power loss or a lost node, not only a killed process; a commit that must not replace
an existing file uses a hard link, which fails atomically when the name exists. On object stores a
move is already atomic and durable once it returns.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pyarrow as pa
import pyarrow.fs as pafs

from runner.errors import OutputError


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
    before the link or rename: if it raises, the temp file is removed and nothing is committed. On a
    local disk it runs once more right after, and a commit that turns out to have landed after the
    lease was lost (the writer froze between the check and the rename) is undone before the error
    is raised: a new part is unlinked, a replaced file gets its previous content back (a hard link to
    it is kept across the rename). Object stores have no links: there the window between the check
    and the move stays open (one request long).
    """
    temp = f"{root}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
    write(temp)
    final = f"{root}/{name}"
    local = isinstance(fs, pafs.LocalFileSystem)
    if local:
        _fsync_file(temp)
    if fence is not None:
        try:
            fence()
        except BaseException:
            fs.delete_file(temp)
            raise
    if not local:
        if not replace and fs.get_file_info(final).type != pafs.FileType.NotFound:
            fs.delete_file(temp)
            return False
        fs.move(temp, final)
        return True
    previous = _keep_previous(root, name) if replace and fence is not None else None
    try:
        try:
            if not _move_local(temp, final, replace):
                return False
        except FileNotFoundError:  # our temp file is gone: a new lease holder cleared it
            if fence is not None:
                fence()
            raise
        if fence is not None:
            _fence_after(fence, final, previous)
    finally:
        for leftover in (temp, previous):
            if leftover is not None and os.path.exists(leftover):
                os.unlink(leftover)
    _fsync_dir(root)
    return True


def _move_local(temp: str, final: str, replace: bool) -> bool:
    if replace:
        os.replace(temp, final)
        return True
    try:
        os.link(temp, final)
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: check, then rename (the lease keeps one writer)
        if os.path.exists(final):
            return False
        os.rename(temp, final)
    return True


def _keep_previous(root: str, name: str) -> str | None:
    """A hard link to the file about to be replaced (under a temp name of ours), so a fenced-out
    replace can be undone."""
    previous = f"{root}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        os.link(f"{root}/{name}", previous)
        return previous
    except FileNotFoundError:
        return None
    except OSError:  # no hard links here: the replace cannot be undone
        return None


def _fence_after(fence: Callable, final: str, previous: str | None) -> None:
    """Check the lease again; if it was lost, undo this commit, then raise."""
    try:
        fence()
    except BaseException:
        try:
            if previous is not None:
                os.replace(previous, final)
            else:
                os.unlink(final)
        except FileNotFoundError:  # the new holder already removed it
            pass
        raise


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
