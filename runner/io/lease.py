"""One writer per output directory: a numbered lease file, taken before anything is written.

Two drivers on one directory (a nightly run overlapping a slow previous one, a scheduler's retry)
would each generate every pending row and commit it: every id twice. So a driver first takes the
directory's lease, and every commit it makes is fenced by it.

The lease is a sequence of generations, one file each: `_lease.000007.json` is generation 7, the
highest number is the current lease. A file names its holder (host, pid, boot id, pid namespace, start
time, a random token), its heartbeat, and `sealed`: the part files that were committed when it was
taken (`runner.io.catalogue` uses it to fence). Taking the lease is creating the next generation's file
exclusively, from a complete temp file (`link`, which fails atomically when the name exists): there is
never an empty or half-written lease, and of two drivers that both saw generation 6 stale exactly one
creates 7 (a compare-and-swap on the generation); the other starts over, and finds 7 live. Nothing
ever replaces or deletes a lease file another driver may hold: the holder touches only its own file
(the heartbeat is its mtime), so a holder frozen inside a heartbeat and resumed after a takeover
writes to a superseded file, never over the new holder's.

A live lease refuses a second driver with one line naming the holder. A lease is taken over when its
heartbeat is older than its holder's `timeout_s` (a killed driver, a lost node: each lease file records
its holder's timeout and heartbeat interval, and a taker judges by those, never by its own setting,
so a driver started with a short timeout cannot evict one that beats at a slower pace), or at once when its holder is
provably dead: same host, same boot and same pid namespace as this process, and its pid gone (a
holder in another container with host networking has the same host name but another pid namespace:
only the heartbeat counts there). `check()` reads the current generation from storage; every commit
calls it (`runner.io.durable.atomic_write`, after the slow temp write, right before the link), so a
driver whose lease was taken over stops (`LeaseLost`) before writing anything more.

Object stores (`s3://`, `gs://`) have no exclusive create: the lease is written and read back a second
later, which catches every overlap except two drivers starting within that second.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace

import pyarrow.fs as pafs

from runner.errors import OutputError
from runner.io.holder import Holder, this_machine

log = logging.getLogger(__name__)

LEGACY_NAME = "_lease.json"  # the single lease file of earlier versions
_LEASE_RE = re.compile(r"^_lease\.(\d{6,})\.json$")
_TEMP_RE = re.compile(r"^\.lease-[0-9a-f]{32}\.tmp$")


def lease_name(generation: int) -> str:
    """``_lease.000007.json``."""
    return f"_lease.{generation:06d}.json"


class LeaseLost(OutputError):
    """Another driver took this directory's lease over: this one must stop writing."""

    exit_code = 1


class Lease:
    """The lease on one output directory; `acquire()` it, `release()` it (or use `with`).

    While held, a daemon thread refreshes the heartbeat; `check()` raises `LeaseLost` once another
    driver holds the directory. `seal(previous)` (given by the directory) lists the parts committed
    under the previous lease, written into the new lease file."""

    def __init__(self, fs: pafs.FileSystem, root: str, timeout_s: float = 120.0, heartbeat_s: float = 10.0):
        self.fs, self.root = fs, root
        self.timeout_s = timeout_s
        self.heartbeat_s = min(heartbeat_s, timeout_s / 3)
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self.generation: int | None = None
        self.next_part = 0  # the first part number this holder's writer may use (its seal's)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None
        self._local = isinstance(fs, pafs.LocalFileSystem)

    # -- taking and giving back ------------------------------------------------------------------
    def acquire(self, seal: Callable[[Holder | None], tuple[list, int]] = lambda _previous: ([], 0)) -> Lease:
        """Take the lease or raise `OutputError` (exit 2) naming the live holder."""
        if self.fs.get_file_info(self.root).type == pafs.FileType.File:
            raise OutputError(f"output.path: {self.root} is a file, not a directory")
        try:
            try:
                self.fs.create_dir(self.root, recursive=True)
                self._take(seal)
            except OSError as err:
                raise OutputError(f"output.path: {self.root} is not writable ({err})") from None
        except BaseException:  # a signal half way (Ctrl-C, a scheduler's SIGTERM): nothing left held
            if self.generation is not None:
                self.release()
            raise
        self._thread = threading.Thread(target=self._beat, name="output-lease", daemon=True)
        self._thread.start()
        return self

    def _take(self, seal: Callable[[Holder | None], tuple[list, int]]) -> None:
        for _ in range(50):  # each retry means another driver moved the lease meanwhile
            self._refuse_legacy_holder()
            current = self.current()
            if current is not None and current.live(time.time(), self.timeout_s):
                raise self._in_use(current)
            number = (current.generation if current is not None else 0) + 1
            sealed, next_part = seal(current)
            mine = self._holder(number, sealed, next_part)
            self.generation = number  # before the create: an exception right after it still releases
            if not self._create(number, mine):
                self.generation = None
                continue  # another driver took this generation first: look again
            newest = self.generations()[-1]
            if newest != number:  # a higher one appeared that our listing missed: not ours
                self.generation = None
                self.fs.delete_file(f"{self.root}/{lease_name(number)}")  # ours, and superseded
                raise self._in_use(self.read(newest))
            self.next_part = next_part
            self._tidy(number)
            if current is not None and not current.released:
                log.warning(
                    "output.path: took over the lease of a run that stopped heartbeating (%s)",
                    current.describe(time.time()),
                )
            return
        raise OutputError(f"output.path: {self.root}: its lease keeps changing hands; try again")

    def release(self) -> None:
        """Stop the heartbeat and mark the lease released, if it is still ours (its file stays: its
        seal fences the parts of the runs before it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.check()
            self._write(lease_name(self.generation), replace(self._mine(), released=True))
        except LeaseLost:
            return
        except OSError as err:  # the lease then ends by its timeout
            log.warning("output lease not released: %s", err)

    def renew(self, sealed: list, next_part: int) -> None:
        """Move to the next generation with a new seal (`--overwrite`: no part present counts any more),
        by the exclusive create a takeover uses: of this holder and a driver taking the lease over at
        the same moment, exactly one gets that generation. `LeaseLost` when the other did."""
        self.check()
        number = self.generation + 1
        if not self._create(number, self._holder(number, sealed, next_part)):
            self._lost = f"output.path: {self.root}: this run's lease was taken over; stopping"
            raise LeaseLost(self._lost)
        self.generation, self.next_part = number, next_part
        self._tidy(number)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def check(self) -> None:
        """Raise `LeaseLost` unless this driver holds the current generation, read from storage now
        (called right before each commit)."""
        if self._lost is None:
            newest = self.generations()
            holder = self.read(newest[-1]) if newest else None
            if holder is None or holder.generation != self.generation or holder.token != self.token:
                who = holder.describe(time.time()) if holder else "lease file removed"
                self._lost = f"output.path: {self.root}: this run's lease was taken over ({who}); stopping"
                log.error(self._lost)
        if self._lost is not None:
            raise LeaseLost(self._lost)

    # -- the files --------------------------------------------------------------------------------
    def generations(self) -> list[int]:
        """Generation numbers of the lease files present, ascending."""
        if self.fs.get_file_info(self.root).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.root))
        return sorted(int(m.group(1)) for info in infos if (m := _LEASE_RE.match(info.base_name)))

    def current(self) -> Holder | None:
        """The current lease (highest generation), or None when there is none."""
        numbers = self.generations()
        while numbers:  # a file removed between the listing and the read: the next lower one
            holder = self.read(numbers.pop())
            if holder is not None:
                return holder
        return None

    def read(self, generation: int, name: str | None = None) -> Holder | None:
        """One lease file, None when absent. The heartbeat is the later of the written one and the
        file's mtime (a heartbeat touches it). A file that does not parse (a foreign one; ours are
        never half-written) counts as a holder whose heartbeat is its mtime."""
        path = f"{self.root}/{name or lease_name(generation)}"
        try:
            info = self.fs.get_file_info(path)
            if info.type != pafs.FileType.File:
                return None
            touched = info.mtime.timestamp() if info.mtime is not None else 0.0
            with self.fs.open_input_stream(path) as stream:
                data = json.loads(stream.read())
            fields = {k: data[k] for k in Holder.__dataclass_fields__ if k in data}
            holder = Holder(**fields)
            # The name, not the content, says which generation a file is.
            return replace(holder, heartbeat=max(holder.heartbeat, touched), generation=generation)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):  # other OSErrors (a storage hiccup) are raised
            return Holder("?", 0, 0.0, touched, "", generation=generation)

    def _refuse_legacy_holder(self) -> None:
        """An earlier version's `_lease.json`: refused while it beats, else removed once ours is taken."""
        legacy = self.read(0, LEGACY_NAME)
        if legacy is not None and time.time() - legacy.heartbeat <= self.timeout_s:
            raise self._in_use(legacy)

    def _in_use(self, holder: Holder | None) -> OutputError:
        now = time.time()
        who = holder.describe(now) if holder is not None else "unknown holder"
        return OutputError(
            f"output.path: {self.root} is in use by another run ({who}); "
            "wait for it to finish, or remove its _lease.*.json files if that run is gone"
        )

    def _holder(self, generation: int, sealed: list, next_part: int = 0) -> Holder:
        boot, namespace = this_machine()
        host, now = socket.gethostname(), time.time()
        return Holder(
            host,
            os.getpid(),
            self.started,
            now,
            self.token,
            generation,
            boot,
            namespace,
            False,
            sealed,
            next_part,
            self.timeout_s,
            self.heartbeat_s,
        )

    def _mine(self) -> Holder:
        written = self.read(self.generation) or self._holder(self.generation, [])
        return replace(written, heartbeat=time.time())

    def _create(self, generation: int, holder: Holder) -> bool:
        """Create generation's file, complete, only if no file has that name; False when one has."""
        final = f"{self.root}/{lease_name(generation)}"
        temp = f"{self.root}/.lease-{self.token}.tmp"
        data = json.dumps(asdict(holder), indent=2).encode()
        if not self._local:
            if self.fs.get_file_info(final).type != pafs.FileType.NotFound:
                return False
            self._write(lease_name(generation), holder)
            time.sleep(1.0)  # a racing driver's write lands within this; the read-back then shows it
            written = self.read(generation)
            return written is not None and written.token == self.token
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, final)  # atomic, fails if the name exists: never an empty or torn lease
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temp)

    def _write(self, name: str, holder: Holder) -> None:
        """Write our own lease file whole (temp file + rename): only its holder ever writes it."""
        temp = f"{self.root}/.lease-{self.token}.tmp"
        with self.fs.open_output_stream(temp) as stream:
            stream.write(json.dumps(asdict(holder), indent=2).encode())
        self.fs.move(temp, f"{self.root}/{name}")

    def _tidy(self, generation: int) -> None:
        """Remove superseded lease files (ours is the newest: they fence nothing now), a stale legacy
        lease, and lease temp files a killed driver left."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.root))
        for info in infos:
            name, m = info.base_name, _LEASE_RE.match(info.base_name)
            old = (m is not None and int(m.group(1)) < generation) or name == LEGACY_NAME
            stale_temp = _TEMP_RE.match(name) and time.time() - info.mtime.timestamp() > self.timeout_s
            if old or stale_temp:
                try:
                    self.fs.delete_file(f"{self.root}/{name}")
                except FileNotFoundError:
                    pass

    # -- the heartbeat ----------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s) and self._lost is None:
            try:
                self._beat_once()
            except LeaseLost:
                return
            except OSError as err:  # a storage hiccup: try again next beat; the timeout is several beats
                log.warning("output lease heartbeat failed: %s", err)

    def _beat_once(self) -> None:
        """Refresh the heartbeat of our own file, or record that the lease is someone else's now."""
        self.check()
        self._touch()

    def _touch(self) -> None:
        """Our file's mtime is the heartbeat (local disks): a touch never creates a file, so a beat
        delayed past a takeover changes nothing but our own superseded file, if it still exists."""
        if self._local:
            os.utime(f"{self.root}/{lease_name(self.generation)}")
        else:
            self._write(lease_name(self.generation), self._mine())
