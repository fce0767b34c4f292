"""Killed and stopped jobs: the same command run again finishes the job, every row exactly once.

Each job here is the real CLI in its own process group, with its own local Ray, as a user runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from runner.config import build_config
from runner.io.inputs import read_input
from runner.orchestration.signals import Interrupted, StopSignals
from tests.conftest import PROMPTS, write_jsonl

ROWS = 96  # enough generation after the first committed part that a kill lands mid-job


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    rows = [{"prompt": f"{PROMPTS[i % len(PROMPTS)]} ({i})", "topic": f"t{i % 5}"} for i in range(ROWS)]
    return write_jsonl(tmp_path_factory.mktemp("input") / "prompts.jsonl", rows)


@pytest.fixture(scope="module")
def settings(source) -> dict:
    """One CPU replica, small tasks and files so parts commit often."""
    return {
        "model": {"path": "demo:tiny-llama", "dtype": "float32"},
        "data": {"source": str(source), "carry_columns": ["topic"]},
        "sampling": {"max_new_tokens": 24},
        "batching": {"rows_per_task": 4},
        "placement": {"replicas": 1},
        "output": {"rows_per_file": 4},
        "ray": {"num_cpus": 2, "num_gpus": 0},
    }


@pytest.fixture(scope="module")
def oracle(settings) -> dict[str, dict]:
    """An uninterrupted run: the stage in this process over every row at once, keyed by id."""
    from jobs.generate.stage import GenerationStage

    cfg = build_config(settings)
    return {r["id"]: r for r in GenerationStage(cfg)(read_input(cfg.data)).to_pylist()}


@pytest.fixture
def job(tmp_path, settings) -> Path:
    """The job's config file; its output goes to `out_dir(job)`."""
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({**settings, "output": {**settings["output"], "path": str(tmp_path / "out")}}))
    return path  # JSON is YAML


def out_dir(config: Path) -> Path:
    return config.parent / "out"


def cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "runner", "run", str(config), *args]


def start(config: Path) -> subprocess.Popen:
    """The job in its own process group (as a shell runs it), stderr to a file."""
    with open(config.parent / "stderr.txt", "w") as stderr:  # the child keeps its own copy
        return subprocess.Popen(
            cli(config), cwd=config.parent, stderr=stderr, stdout=subprocess.DEVNULL, start_new_session=True
        )


def wait_for_first_part(proc: subprocess.Popen, out: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not (out / "part-00000.parquet").exists():
        assert proc.poll() is None, f"job ended before committing a part: {read_stderr(out.parent)}"
        assert time.monotonic() < deadline, "no part committed in time"
        time.sleep(0.01)


def read_stderr(folder: Path) -> str:
    return (folder / "stderr.txt").read_text()


def stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def committed_state(out: Path, killed: bool = False) -> tuple[list[dict], dict]:
    """What a reader sees now: every part file reads whole; ids are unique; no temp files, except
    (`killed`) the hidden one of a part being written when a SIGKILL landed: readers skip names
    starting with '.', and the next run removes it (checked after the resume)."""
    temps = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    if killed:
        assert all(name.startswith(".") for name in temps), temps  # hidden: readers skip them
    else:
        assert not temps
    rows = pq.read_table(out).to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "no row committed twice"
    return rows, json.loads((out / "_job.json").read_text())


def assert_complete_and_equal(out: Path, expected: dict[str, dict]) -> None:
    rows, summary = committed_state(out)
    assert sorted(r["id"] for r in rows) == sorted(expected), "every input row exactly once"
    for row in rows:
        want = expected[row["id"]]
        for column in ("generation", "finish_reason", "prompt_tokens", "completion_tokens", "error"):
            assert row[column] == want[column], f"row {row['id']} column {column}"
    assert summary["status"] == "done" and summary["output_rows"] == len(expected)


@pytest.mark.slow
def test_killed_driver_resumes_without_recomputing_committed_rows(job, oracle):
    out = out_dir(job)
    proc = start(job)
    try:
        wait_for_first_part(proc, out)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    finally:
        stop_group(proc)
    committed, summary = committed_state(out, killed=True)
    assert summary["status"] == "running", "the kill came before the job ended"
    assert 0 < len(committed) < ROWS

    other = subprocess.run(cli(job, "--set", "sampling.max_new_tokens=8"), capture_output=True, text=True)
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1] == (
        f"error: output.path: {out} holds a job with different settings (sampling.max_new_tokens); "
        "pass --overwrite or choose another output directory"
    )

    again = subprocess.run(cli(job), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert_complete_and_equal(out, oracle)
    _, summary = committed_state(out)
    assert summary["rows_skipped_already_done"] == len(committed), "committed rows were not redone"
    assert summary["rows_ok"] + summary["rows_error"] == ROWS - len(committed)
    kept = {r["id"]: r for r in pq.read_table(out).to_pylist()}
    assert all(kept[r["id"]]["replica"] == r["replica"] for r in committed), "first run's rows untouched"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "to_group", "code"),
    [(signal.SIGTERM, False, 143), (signal.SIGINT, True, 130)],
    ids=["SIGTERM", "ctrl-c"],
)
def test_signal_stops_cleanly_with_shell_exit_code_in_a_resumable_state(job, signum, to_group, code):
    out = out_dir(job)
    proc = start(job)
    try:
        wait_for_first_part(proc, out)
        # SIGTERM comes to the driver (a scheduler, `kill`); Ctrl-C to the terminal's whole group.
        if to_group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        assert proc.wait(timeout=60) == code, read_stderr(job.parent)
    finally:
        stop_group(proc)
    last = read_stderr(job.parent).strip().splitlines()[-1]
    assert last.startswith(f"interrupted ({signal.Signals(signum).name}): output committed so far is kept")
    # The state a rerun resumes from (as the kill test shows): whole parts, each row at most once,
    # marked interrupted; rows that were generated when the signal came are committed, not dropped.
    committed, summary = committed_state(out)
    assert summary["status"] == "interrupted" and summary["output_rows"] == len(committed) < ROWS
    assert summary["rows_ok"] + summary["rows_error"] == len(committed)


def test_a_signal_during_a_commit_is_delivered_after_it():
    # The writer must never be interrupted between writing a part and recording it (it would
    # commit those rows again); the job wraps each commit in hold().
    committed, before = [], signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals, pytest.raises(Interrupted) as stopped:
        with signals.hold():
            os.kill(os.getpid(), signal.SIGTERM)
            committed.append("part")
    assert committed == ["part"] and stopped.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == before, "the caller's handler is back"
