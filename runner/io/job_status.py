"""The state of a job from its output directory alone (local or any pyarrow filesystem URI): what
`runner status OUTPUT_DIR` prints, and the rows done `runner list` shows for a submitted job.

Everything is read from the directory: `_job.json` (the run's start, its settings, how it ended),
the committed part files (rows and error rows done, the last commit's time) and the lease (whether
the driver that holds the directory is alive). So it works from any machine that can read the
directory, while the job runs, after it ended, and after its driver was killed: a summary that says
`running` under a lease whose heartbeat stopped is a `stale` job, which a rerun resumes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import pyarrow.fs as pafs

from runner.errors import OutputError
from runner.io.catalogue import PART_RE, Catalogue
from runner.io.durable import filesystem
from runner.io.lease import Lease
from runner.io.outputs import read_summary

DEFAULT_LEASE_TIMEOUT_S = 120.0


@dataclass
class JobStatus:
    """One output directory's job, as `runner status` shows it."""

    path: str
    state: str  # running, stale (its driver is gone), done, failed, interrupted, empty
    rows_done: int
    rows_error: int
    rows_total: int | None  # the input's rows (None: a summary written before it was recorded)
    rows_per_s: float | None  # this run's
    eta_s: float | None
    lease: str | None  # alive, stale (its holder stopped beating) or released; None: no lease
    holder: str | None  # who holds (or held) the lease, with its heartbeat
    last_commit: str | None  # UTC ISO time of the newest part file
    started_at: str | None
    ended_at: str | None
    model: str | None

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """The human form: a headline, then the details."""
        total = f"/{self.rows_total}" if self.rows_total is not None else ""
        rate = f", {self.rows_per_s:.2f} rows/s" if self.rows_per_s else ""
        eta = f", ETA {_duration(self.eta_s)}" if self.eta_s is not None else ""
        out = [
            f"{self.path}: {self.state}, {self.rows_done}{total} rows done, {self.rows_error} errors{rate}{eta}"
        ]
        if self.model:
            out.append(f"  model: {self.model}")
        if self.started_at:
            out.append(f"  started {self.started_at}" + (f", ended {self.ended_at}" if self.ended_at else ""))
        out.append(f"  last commit: {self.last_commit or 'none yet'}")
        if self.lease:
            out.append(f"  lease: {self.lease}, {self.holder}")
        return out


def directory_status(path: str, now: float | None = None) -> JobStatus:
    """The status of the job writing (or that wrote) `path`; an OutputError when nothing is there."""
    fs, root = filesystem(path)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise OutputError(f"{path}: no such output directory")
    now = time.time() if now is None else now
    summary = read_summary(fs, root) or {}
    catalogue = Catalogue(fs, root)
    if not summary and not catalogue.numbers():
        raise OutputError(f"{path}: not a job's output directory (no _job.json, no part files)")
    rows, errors = catalogue.counts()
    lease, holder = _holder(Lease(fs, root), summary, now)
    state = _state(summary, lease == "alive", rows)
    rate, eta = _rate(summary, state, rows, now)
    return JobStatus(
        path=path,
        state=state,
        rows_done=rows,
        rows_error=errors,
        rows_total=summary.get("input_rows"),
        rows_per_s=rate,
        eta_s=eta,
        lease=lease,
        holder=holder,
        last_commit=_last_commit(fs, root),
        started_at=summary.get("started_at"),
        ended_at=summary.get("ended_at"),
        model=summary.get("model"),
    )


def _holder(lease: Lease, summary: dict, now: float) -> tuple[str | None, str | None]:
    """(alive | stale | released, who) of the directory's current lease."""
    current = lease.current()
    if current is None:
        return None, None
    output = summary.get("config", {}).get("output") or {}
    timeout = output.get("lease_timeout_s") or DEFAULT_LEASE_TIMEOUT_S
    if current.released:
        return "released", current.describe(now)
    return ("alive" if current.live(now, timeout) else "stale"), current.describe(now)


def _state(summary: dict, alive: bool, rows: int) -> str:
    status = summary.get("status")
    if status is None:
        return "running" if alive else ("stale" if rows else "empty")
    if status == "running" and not alive:
        return "stale"  # the driver died without saying how it ended: a rerun resumes
    return status


def _rate(summary: dict, state: str, rows: int, now: float) -> tuple[float | None, float | None]:
    """This run's rows per second, and (while running) the time left at that rate."""
    started = _timestamp(summary.get("started_at"))
    if started is None:
        return None, None
    ended = _timestamp(summary.get("ended_at")) or now
    done_here = rows - (summary.get("rows_skipped_already_done") or 0)  # rows of earlier runs do not count
    elapsed = ended - started
    if elapsed <= 0 or done_here <= 0:
        return None, None
    rate = done_here / elapsed
    total = summary.get("input_rows")
    if state != "running" or total is None:
        return rate, None
    return rate, max(0.0, (total - rows) / rate)


def _last_commit(fs: pafs.FileSystem, root: str) -> str | None:
    infos = fs.get_file_info(pafs.FileSelector(root))
    times = [i.mtime for i in infos if PART_RE.match(i.base_name) and i.mtime is not None]
    return max(times).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if times else None


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
