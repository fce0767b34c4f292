"""A suite directory: the history of scheduled eval runs of one config.

Layout: `SUITE/runs/<run name>/` (each an eval output directory), `SUITE/latest` (a symlink to the
newest finished run) and `SUITE/history.parquet` (one row per run x task x metric, appended after
each finished run; one plain Parquet file, read by pandas, polars and duckdb as is). The nightly job
calls the same `runner eval CONFIG --suite SUITE` every time: a run killed half way is resumed by the
next call with the same settings instead of a new run being started next to it.

Two evals may finish into one suite at once (two configs on one schedule): choosing a new run's name
and recording a run each happen under the suite's lock (`SUITE/.suite.lock`, an flock: released by
the kernel when its holder dies, so a killed eval never leaves it held), and every temp file has a
name of its own, so both records are kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.eval.config import EvalConfig
from runner.errors import ConfigError, InputError
from runner.io.jobdir import JobDir

DEFAULT_TEMPLATE = "{utc:%Y%m%dT%H%M%SZ}"
HISTORY_SCHEMA = pa.schema(
    [
        ("run", pa.string()),
        ("finished_at", pa.timestamp("s", tz="UTC")),
        ("task", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("stderr", pa.float64()),
        ("n", pa.int64()),
        ("errors", pa.int64()),
        ("model", pa.string()),
        ("model_revision", pa.string()),
        ("config_hash", pa.string()),
        ("code_version", pa.string()),
    ]
)
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def run_name(template: str | None, cfg: EvalConfig, now: datetime | None = None) -> str:
    """A run's directory name from the template: {utc} (a datetime, format it), {model}, {config_hash}."""
    now = now or datetime.now(timezone.utc)
    model = _SAFE.sub("-", cfg.model.path.rstrip("/").rsplit("/", 1)[-1])
    try:
        name = (template or DEFAULT_TEMPLATE).format(utc=now, model=model, config_hash=cfg.result_hash())
    except (KeyError, ValueError, IndexError) as err:
        raise ConfigError(
            f"--run-name: cannot fill {template!r} ({err}); use {{utc}}, {{model}}, {{config_hash}}"
        ) from None
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ConfigError(f"--run-name: {name!r} is not a plain directory name")
    return name


class Suite:
    """One suite directory (local)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.runs = self.root / "runs"
        self.history_file = self.root / "history.parquet"
        self.latest_link = self.root / "latest"
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--suite: {root} is not a directory")

    def run_dir(self, cfg: EvalConfig, template: str | None = None) -> Path:
        """Where this run goes: an unfinished run of the same settings (resumed), else a new name, its
        directory made here so a second eval starting in the same second cannot choose it too."""
        with self._locked():
            unfinished = self._unfinished(cfg.result_hash())
            if unfinished is not None:
                return unfinished
            name = run_name(template, cfg)
            self.runs.mkdir(parents=True, exist_ok=True)
            try:
                (self.runs / name).mkdir()
            except FileExistsError:
                raise ConfigError(
                    f"--run-name: run {name!r} already exists in {self.runs}; choose another name"
                ) from None
            return self.runs / name

    @contextlib.contextmanager
    def _locked(self):
        """The suite's lock, held while the body runs (the history's read-modify-write, a new run's name)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".suite.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _unfinished(self, config_hash: str) -> Path | None:
        if not self.runs.is_dir():
            return None
        for run in sorted(self.runs.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
            summary = JobDir(str(run)).summary() if run.is_dir() else None
            if summary and summary.get("config_hash") == config_hash and summary.get("status") != "done":
                return run
        return None

    def record(self, run_dir: str | Path, document: dict) -> None:
        """After a finished run: append its metrics to the history and point `latest` at it."""
        name = Path(run_dir).name
        rows = history_rows(name, document, datetime.now(timezone.utc))
        with self._locked():
            table = pa.Table.from_pylist(rows, schema=HISTORY_SCHEMA)
            if self.history_file.exists():
                old = self.history()  # a resumed run recorded before is replaced, not listed twice
                previous = old.filter(pc.not_equal(old["run"], name))
                table = pa.concat_tables([previous.cast(HISTORY_SCHEMA), table])
            self._replace_history(table)
            link = self.root / f".latest.{uuid.uuid4().hex}.tmp"
            link.symlink_to(Path("runs") / name)
            os.replace(link, self.latest_link)  # atomic: a reader sees the old or the new latest

    def _replace_history(self, table: pa.Table) -> None:
        # A temp file of its own (readers and `runner.io` skip dot-names), complete before it replaces.
        fd, temp = tempfile.mkstemp(dir=self.root, prefix=".history.", suffix=".parquet.tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                pq.write_table(table, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.history_file)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def history(self) -> pa.Table:
        """Every recorded run x task x metric (InputError when the suite has none)."""
        if not self.history_file.is_file():
            raise InputError(f"--suite: {self.root} has no history.parquet (no finished runs yet)")
        return pq.read_table(self.history_file)

    def run_names(self) -> list[str]:
        """Recorded runs, oldest first."""
        if not self.history_file.is_file():
            return []
        rows = self.history().select(["run", "finished_at"]).to_pylist()
        finished = {}
        for row in rows:
            finished[row["run"]] = max(finished.get(row["run"], row["finished_at"]), row["finished_at"])
        return sorted(finished, key=lambda run: finished[run])

    def latest(self) -> str | None:
        """The newest recorded run's directory, or None."""
        names = self.run_names()
        return str(self.runs / names[-1]) if names else None

    def latest_pair(self) -> tuple[str, str]:
        """(previous, latest) run directories; InputError with fewer than two runs."""
        names = self.run_names()
        if len(names) < 2:
            raise InputError(f"--suite: {self.root} has {len(names)} finished run(s); comparing needs two")
        return str(self.runs / names[-2]), str(self.runs / names[-1])


def history_rows(run: str, document: dict, finished: datetime) -> list[dict]:
    """One history row per task x metric of a run's metrics document."""
    rows = []
    for task, entry in document["tasks"].items():
        for metric, value in entry.items():
            if metric in ("n", "errors") or metric.endswith("_stderr"):
                continue
            rows.append(
                {
                    "run": run,
                    "finished_at": finished,
                    "task": task,
                    "metric": metric,
                    "value": value,
                    "stderr": entry.get(f"{metric}_stderr"),
                    "n": entry["n"],
                    "errors": entry["errors"],
                    "model": document.get("model"),
                    "model_revision": document.get("model_revision"),
                    "config_hash": document.get("config_hash"),
                    "code_version": document.get("code_version"),
                }
            )
    return rows
