"""No hangs: an engine call without progress for batching.stall_timeout_s fails its rows, retryably."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pytest

from jobs.generate.stage import GenerationStage
from runner.config import build_config


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
    hang = stage.engine.model.register_forward_hook(
        lambda *_: release.wait(60) and None
    )  # a hook returning a value replaces the output  # a hung kernel
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


def test_a_slow_call_that_keeps_progressing_is_not_a_stall(tiny_model):
    # A stage of its own: the module's stage may still be finishing the call the test above hung.
    stage = stage_with_timeout(3.0)
    slow = stage.engine.model.register_forward_hook(lambda *_: time.sleep(0.5))  # each step 0.5 s
    try:
        out = stage(BATCH).to_pylist()
    finally:
        slow.remove()
    assert [r["error"] for r in out] == [None, None, None]
    assert not stage.watchdog.broken


def test_a_lost_continuous_request_is_flagged_while_other_calls_progress(tiny_model):
    """Progress is per call: a call whose request the manager never answers (its outputs dropped
    here, as a lost request would be) stalls within the timeout even while other calls on the same
    replica keep generating; a replica-wide progress signal would never flag it."""
    from runner.config import BatchingConfig, ModelConfig, SamplingConfig
    from runner.engine import Engine, Request
    from runner.engine.types import Progress
    from runner.engine.watchdog import Stalled, Watchdog

    batching = BatchingConfig(strategy="continuous", token_budget=4096, max_batch_size=8)
    engine = Engine(
        ModelConfig(path=tiny_model, dtype="float32"), SamplingConfig(max_new_tokens=16), batching
    )
    generator, update = engine.generator, engine.generator._update

    def drop_lost(output, seq, call):
        if not seq.request.id.startswith("lost"):
            update(output, seq, call)

    generator._update = drop_lost
    ids = engine.tokenize(["Hello", "What is the capital of France?"])
    busy, stop, others = [], threading.Event(), Progress()

    def keep_busy() -> None:
        while not stop.is_set():
            done = engine.generate([Request(f"b{len(busy)}-{i}", p, 16) for i, p in enumerate(ids)], others)
            busy.append(all(c.error is None for c in done))

    worker = threading.Thread(target=keep_busy, daemon=True)
    worker.start()
    try:
        while others.steps == 0:
            time.sleep(0.01)
        started, steps_before = time.monotonic(), others.steps
        with pytest.raises(Stalled, match="no progress"):
            Watchdog(1.0).call(lambda p: engine.generate([Request("lost", ids[0], 16)], p))
        waited = time.monotonic() - started
        steps_meanwhile = others.steps - steps_before
    finally:
        stop.set()
        worker.join(timeout=30)
        engine.generator._pending.clear()
        engine.close()
    assert 1.0 <= waited < 5
    assert steps_meanwhile >= 2 and all(busy)  # the other calls progressed meanwhile
