"""`runner status OUTPUT_DIR`: a job's state from its directory alone, for a run in progress, a
finished one, an interrupted one and one whose driver died (a submitted job: tests/test_submit.py).
The directories are written by the runner's own writers (JobDir: lease, parts, summary), as a run
writes them; the fake clock is only `now`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from runner.config import build_config
from runner.errors import OutputError
from runner.io.job_status import directory_status
from runner.io.jobdir import JobDir
from runner.io.summary import JobStats, build_summary

ROOT = Path(__file__).resolve().parents[1]


def rows(start: int, count: int, errors: int = 0) -> pa.Table:
    ids = [f"r{i:04d}" for i in range(start, start + count)]
    error = [("boom" if i < errors else None) for i in range(count)]
    return pa.table({"id": ids, "error": pa.array(error, pa.string())})


def write_run(path: Path, done: int, total: int, status: str, errors: int = 0, skipped: int = 0) -> JobDir:
    """A run of `total` rows that committed `done` (of which `errors` failed) and ended with `status`
    ("running": it still holds the lease, returned so the test can release it)."""
    cfg = build_config({"model": {"path": "demo:tiny-llama"}, "data": {"source": "x.jsonl"}})
    job_dir = JobDir(str(path)).lease(timeout_s=30)
    job_dir.acquire()
    stats = JobStats(rows_skipped=skipped, rows_todo=total - skipped, started=time.monotonic() - 100)
    stats.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 100))
    job_dir.write_summary(build_summary(cfg, stats, status="running"))
    writer = job_dir.writer(rows_per_file=10)
    writer.write(rows(0, done, errors))
    writer.close()
    if status != "running":
        stats.rows_ok, stats.rows_error = done - skipped - errors, errors
        job_dir.write_summary(build_summary(cfg, stats, status=status))
        job_dir.release()
    return job_dir


def test_a_run_in_progress_shows_rate_and_eta(tmp_path):
    job_dir = write_run(tmp_path / "out", done=40, total=100, status="running", errors=3)
    try:
        status = directory_status(str(tmp_path / "out"))
    finally:
        job_dir.release()
    assert (status.state, status.rows_done, status.rows_total, status.rows_error) == ("running", 40, 100, 3)
    assert status.lease == "alive" and "pid" in status.holder
    assert status.rows_per_s == pytest.approx(0.4, rel=0.1)  # 40 rows in ~100 s
    assert status.eta_s == pytest.approx(60 / status.rows_per_s, rel=0.01)
    assert status.last_commit is not None and status.ended_at is None


def test_a_finished_run(tmp_path):
    write_run(tmp_path / "out", done=100, total=100, status="done", skipped=20)
    status = directory_status(str(tmp_path / "out"))
    assert (status.state, status.rows_done, status.rows_total, status.eta_s) == ("done", 100, 100, None)
    assert status.lease == "released" and status.ended_at is not None
    assert status.rows_per_s == pytest.approx(0.8, rel=0.1)  # this run's 80 rows, not the 20 done before


def test_an_interrupted_run(tmp_path):
    write_run(tmp_path / "out", done=30, total=100, status="interrupted")
    status = directory_status(str(tmp_path / "out"))
    assert (status.state, status.rows_done, status.eta_s) == ("interrupted", 30, None)


def test_a_run_whose_driver_died_is_stale(tmp_path):
    job_dir = write_run(tmp_path / "out", done=30, total=100, status="running")
    try:  # a heartbeat older than the lease timeout: the driver stopped beating (killed, node lost)
        status = directory_status(str(tmp_path / "out"), now=time.time() + 3600)
    finally:
        job_dir.release()
    assert (status.state, status.lease, status.eta_s) == ("stale", "stale", None)


def test_not_a_job_directory(tmp_path):
    with pytest.raises(OutputError, match="no such output directory"):
        directory_status(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(OutputError, match="not a job's output directory"):
        directory_status(str(tmp_path / "empty"))


def test_the_cli_reads_a_directory_by_path_and_by_uri(tmp_path):
    write_run(tmp_path / "out", done=100, total=100, status="done", errors=2)
    for target in (str(tmp_path / "out"), f"file://{tmp_path / 'out'}"):
        text = runner("status", target)
        assert text.returncode == 0, text.stderr
        assert text.stdout.startswith(f"{target}: done, 100/100 rows done, 2 errors")
    as_json = json.loads(runner("status", str(tmp_path / "out"), "--json").stdout)
    assert as_json["state"] == "done" and as_json["rows_error"] == 2
    missing = runner("status", str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stderr.strip().endswith("nope: no such output directory")


def runner(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
