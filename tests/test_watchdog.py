"""No hangs: an engine call without progress for batching.stall_timeout_s fails its rows, retryably."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pytest

from runner.config import build_config
from runner.stage import GenerationStage


def stage_with_timeout(timeout_s: float) -> GenerationStage:
    cfg = build_config(
        {
            "model": {"path": "demo:tiny-llama", "dtype": "float32"},
            "data": {"source": "unused.jsonl"},
            "sampling": {"max_new_tokens": 4},
            "batching": {"stall_timeout_s": timeout_s},
        }
    )
    return GenerationStage(cfg)


@pytest.fixture(scope="module")
def stage(tiny_model) -> GenerationStage:
    return stage_with_timeout(1.0)


BATCH = pa.table({"id": ["a", "b", "c"], "prompt": ["Hello", "What is the capital of France?", "x"]})


def test_a_stalled_engine_call_fails_its_rows_as_engine_errors_and_the_replica_restarts(stage):
    release = threading.Event()
    hang = stage.engine.model.register_forward_hook(lambda *_: release.wait(60))  # a hung kernel
    try:
        started = time.monotonic()
        out = stage(BATCH).to_pylist()
        assert time.monotonic() - started < 10
    finally:
        hang.remove()
        release.set()
    assert [r["finish_reason"] for r in out] == ["error"] * 3
    assert all(
        r["error_kind"] == "engine" and r["error"].startswith("engine stalled: no progress") for r in out
    )
    exits = []
    stage.watchdog.restart_if_broken(exit=exits.append)  # the next call ends the process: Ray restarts it
    assert exits == [1]
    stage.watchdog.broken = False


def test_a_slow_call_that_keeps_progressing_is_not_a_stall(stage):
    slow = stage.engine.model.register_forward_hook(lambda *_: time.sleep(0.4))
    try:
        out = stage(BATCH).to_pylist()
    finally:
        slow.remove()
    assert [r["error"] for r in out] == [None, None, None]
    assert not stage.watchdog.broken
