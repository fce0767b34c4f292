"""Two evals recording into one suite at once: every record is kept, no temp file is shared or left."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq

from jobs.eval.config import EvalConfig
from jobs.eval.suite import Suite
from runner.config import build_config

RECORDS = 12


def document(run: int) -> dict:
    return {
        "tasks": {"qa": {"n": 4, "errors": 0, "exact_match": run / 100, "exact_match_stderr": 0.1}},
        "model": "demo:tiny-llama",
        "config_hash": f"h{run}",
    }


def record_many(root: str, prefix: str) -> None:
    suite = Suite(root)
    for i in range(RECORDS):
        suite.record(Path(root) / "runs" / f"{prefix}-{i:02d}", document(i))


WRITER = (
    "import sys; from tests.test_suite_concurrency import record_many; record_many(sys.argv[1], sys.argv[2])"
)


def test_two_processes_recording_at_once_keep_every_record(tmp_path):
    root = tmp_path / "suite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(root), name], env=env) for name in ("a", "b")
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    runs = set(pq.read_table(root / "history.parquet").column("run").to_pylist())
    assert runs == {f"{name}-{i:02d}" for name in ("a", "b") for i in range(RECORDS)}
    assert sorted(p.name for p in root.iterdir()) == [".suite.lock", "history.parquet", "latest"]
    assert os.readlink(root / "latest") in {f"runs/a-{RECORDS - 1:02d}", f"runs/b-{RECORDS - 1:02d}"}


def test_threads_recording_at_once_keep_every_record(tmp_path):
    root = tmp_path / "suite"
    threads = [threading.Thread(target=record_many, args=(str(root), f"t{k}")) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    history = pq.read_table(root / "history.parquet")
    assert history.num_rows == 4 * RECORDS  # one metric per run
    assert len(set(history.column("run").to_pylist())) == 4 * RECORDS


def test_two_evals_starting_in_the_same_second_get_different_runs(tmp_path):
    tree = {
        "model": {"path": "demo:tiny-llama"},
        "data": {"source": "x.jsonl"},
        "scoring": {"scorer": "exact_match", "target_column": "a"},
    }
    suite = Suite(tmp_path / "suite")
    first = build_config(tree, EvalConfig)
    second = build_config({**tree, "sampling": {"max_new_tokens": 3}}, EvalConfig)
    chosen = suite.run_dir(first, "fixed")
    assert chosen.is_dir()
    try:
        suite.run_dir(second, "fixed")
    except Exception as err:  # noqa: BLE001 - the ConfigError's text is what the user sees
        assert "run 'fixed' already exists" in str(err)
    else:
        raise AssertionError("the second eval chose the first one's run")
