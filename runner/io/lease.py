"""One writer per output directory: a lease file taken before anything is written.

Two drivers on one directory (a nightly run overlapping a slow previous one, a scheduler's retry)
would each generate every pending row and commit it: every id twice. The lease `_lease.json` names
its holder (host, pid, start time, a random token) and a heartbeat the holder refreshes every
`heartbeat_s`. A second driver finds a live lease and stops with one line naming the holder. A lease
whose heartbeat is older than `timeout_s` belongs to a driver that was killed or lost its machine:
it is taken over, and the takeover is logged. A holder on this same host whose process is gone
(`kill -9`) is taken over at once.

Creating the lease is atomic on a local (or NFS) directory: `O_CREAT | O_EXCL`. A takeover is
serialised by a second exclusive file, so two drivers that both see a stale lease cannot both take
it. The holder checks on every heartbeat that the lease still carries its token; a driver whose
lease was taken over (it was frozen longer than the timeout) stops writing (`LeaseLost`).

On object stores (`s3://`, `gs://`) there is no exclusive create: the lease is written and read
back, which catches every overlap except two drivers starting within the same second. The name
starts with `_` so Parquet readers of the directory skip it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs

from runner.errors import OutputError

log = logging.getLogger(__name__)

LEASE_NAME = "_lease.json"
_TAKEOVER_NAME = ".lease-takeover.tmp"


class LeaseLost(OutputError):
    """Another driver took this directory's lease over: this one must stop writing."""

    exit_code = 1


@dataclass(frozen=True)
class Holder:
    """What the lease file says about who holds it."""

    host: str
    pid: int
    started: float
    heartbeat: float
    token: str

    def dead(self) -> bool:
        """Known dead: a process of this host that no longer exists (a killed driver on this machine
        need not wait for the timeout). A holder on another host is judged by its heartbeat only."""
        if self.host != socket.gethostname() or self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        try:  # killed but not yet reaped by its parent: a zombie holds nothing
            with open(f"/proc/{self.pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            return False

    def describe(self, now: float) -> str:
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started))
        return f"host {self.host} pid {self.pid}, started {start}, last heartbeat {now - self.heartbeat:.0f}s ago"


class Lease:
    """The lease on one output directory; `acquire()` it, `release()` it (or use `with`).

    While held, a daemon thread refreshes the heartbeat; `check()` raises `LeaseLost` when another
    driver has taken the lease over.
    """

    def __init__(self, fs: pafs.FileSystem, root: str, timeout_s: float = 120.0, heartbeat_s: float = 10.0):
        self.fs, self.root = fs, root
        self.file = f"{root}/{LEASE_NAME}"
        self.timeout_s = timeout_s
        self.heartbeat_s = min(heartbeat_s, timeout_s / 3)
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None
        self._local = isinstance(fs, pafs.LocalFileSystem)

    # -- taking and giving back ------------------------------------------------------------------
    def acquire(self) -> Lease:
        """Take the lease or raise `OutputError` (exit 2) naming the live holder."""
        if self.fs.get_file_info(self.root).type == pafs.FileType.File:
            raise OutputError(f"output.path: {self.root} is a file, not a directory")
        try:
            self.fs.create_dir(self.root, recursive=True)
            created = self._create()
        except OSError as err:
            raise OutputError(f"output.path: {self.root} is not writable ({err})") from None
        if not created:
            holder = self.read()
            now = time.time()
            if holder is not None and now - holder.heartbeat <= self.timeout_s and not holder.dead():
                raise OutputError(
                    f"output.path: {self.root} is in use by another run ({holder.describe(now)}); "
                    f"wait for it to finish, or remove {LEASE_NAME} if that run is gone"
                )
            self._take_over(holder)
        self._thread = threading.Thread(target=self._beat, name="output-lease", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self.read()
        if holder is not None and holder.token == self.token:
            self.fs.delete_file(self.file)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def check(self) -> None:
        """Raise `LeaseLost` if another driver holds the lease now (called before each commit)."""
        if self._lost is not None:
            raise LeaseLost(self._lost)

    # -- the file ----------------------------------------------------------------------------------
    def read(self) -> Holder | None:
        """The current holder, or None when there is no (readable) lease."""
        try:
            with self.fs.open_input_stream(self.file) as stream:
                data = json.loads(stream.read())
            return Holder(**{k: data[k] for k in Holder.__dataclass_fields__})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            # A torn or foreign file: treat as a holder that never beat, so it is taken over.
            return Holder("?", 0, 0.0, 0.0, "")

    def _content(self) -> bytes:
        holder = Holder(socket.gethostname(), os.getpid(), self.started, time.time(), self.token)
        return json.dumps(holder.__dict__, indent=2).encode()

    def _create(self) -> bool:
        """Create the lease exclusively; False when one exists."""
        if self._local:
            try:
                fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(self._content())
                handle.flush()
                os.fsync(handle.fileno())
            return True
        if self.fs.get_file_info(self.file).type != pafs.FileType.NotFound:
            return False
        self._replace()
        time.sleep(1.0)  # a racing driver's write lands within this; the read-back then shows it
        holder = self.read()
        return holder is not None and holder.token == self.token

    def _replace(self) -> None:
        """Write our lease over whatever is there (temp file + rename, so it is never torn)."""
        temp = f"{self.root}/.lease-{self.token}.tmp"
        with self.fs.open_output_stream(temp) as stream:
            stream.write(self._content())
        self.fs.move(temp, self.file)

    def _take_over(self, stale: Holder | None) -> None:
        guard = f"{self.root}/{_TAKEOVER_NAME}"
        if self._local:
            try:
                os.close(os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                # Another driver is taking over now, or died doing it: a guard older than the timeout is stale.
                if time.time() - os.path.getmtime(guard) <= self.timeout_s:
                    raise OutputError(
                        f"output.path: {self.root}: another run is taking over its stale lease now"
                    ) from None
                os.utime(guard)
        try:
            current = self.read()
            if current is not None and stale is not None and current.token != stale.token:
                raise OutputError(
                    f"output.path: {self.root} is in use by another run, which took it just now "
                    f"({current.describe(time.time())})"
                )
            self._replace()
        finally:
            if self._local:
                os.unlink(guard)
        if stale is not None:
            log.warning(
                "output.path: took over the lease of a run that stopped heartbeating (%s)",
                stale.describe(time.time()),
            )

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s) and self._lost is None:
            try:
                self._beat_once()
            except OSError as err:  # a storage hiccup: try again next beat; the timeout is several beats
                log.warning("output lease heartbeat failed: %s", err)

    def _beat_once(self) -> None:
        """Refresh the heartbeat, or record that the lease is someone else's now."""
        holder = self.read()
        if holder is None or holder.token != self.token:
            who = holder.describe(time.time()) if holder else "lease file removed"
            self._lost = f"output.path: {self.root}: this run's lease was taken over ({who}); stopping"
            log.error(self._lost)
            return
        self._replace()
