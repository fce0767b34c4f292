"""A library change fails fast and clearly, never hangs.

A generation thread or the router that dies of any exception fails every waiting call at once with
that exception's first line (engine error rows in a job), and the start-up probe catches it before the
job's first batch: `auto` moves to the next exact strategy, an explicit strategy is refused naming the
library version. The thread deaths are real: the manager's loop is made to raise as a changed
transformers release did (5.24 changed the loop's signature), the model's forward raises inside the
generation thread, the router's handler raises.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from runner import compat
from runner.config import BatchingConfig, ModelConfig, SamplingConfig, build_config
from runner.engine import Engine, Request
from runner.errors import ConfigError

# The injected thread deaths are the point of these tests: pytest need not report each one again.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


def continuous_engine(tiny_model, strategy: str = "continuous") -> Engine:
    batching = BatchingConfig(strategy=strategy, token_budget=4096, max_batch_size=8, stall_timeout_s=120)
    return Engine(ModelConfig(path=tiny_model, dtype="float32"), SamplingConfig(max_new_tokens=4), batching)


@pytest.fixture
def broken_loop(monkeypatch):
    """The manager's generation loop dies at once of an exception transformers does not catch (the
    failure mode of a private signature change: the thread never reaches the loop's own handler)."""
    from transformers.generation.continuous_batching import ContinuousBatchingManager

    def loop(self, *args, **kwargs):
        raise TypeError("_run_generation_loop() missing 1 required positional argument: 'use_inference_mode'")

    monkeypatch.setattr(ContinuousBatchingManager, "_run_generation_loop", loop)


def test_explicit_continuous_is_refused_at_start_naming_the_library(tiny_model, broken_loop):
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        continuous_engine(tiny_model)
    assert time.monotonic() - started < 30  # seconds, not the stall timeout
    line = str(err.value)
    assert "\n" not in line and line.startswith(
        "batching.strategy: continuous fails on LlamaForCausalLM at start"
    )
    assert "missing 1 required positional argument" in line
    assert f"transformers {compat.version('transformers')}" in line


def test_auto_skips_a_strategy_whose_thread_dies(tiny_model, broken_loop, monkeypatch):
    from runner.engine import strategy

    monkeypatch.setattr(strategy, "preferred_strategy", lambda devices: "continuous")  # as on one GPU
    engine = continuous_engine(tiny_model, "auto")
    try:
        assert engine.strategy == "padded"
    finally:
        engine.close()


def test_a_generation_thread_that_raises_gives_error_rows_within_seconds(tiny_model):
    from jobs.generate.stage import GenerationStage

    cfg = build_config(
        {
            "model": {"path": tiny_model, "dtype": "float32"},
            "data": {"source": "unused.jsonl"},
            "sampling": {"max_new_tokens": 4},
            "batching": {"strategy": "continuous", "stall_timeout_s": 600},
        }
    )
    stage = GenerationStage(cfg)
    try:
        failing = stage.engine.model.register_forward_hook(_raise_in_generation_thread)
        started = time.monotonic()
        out = stage(pa.table({"id": ["a", "b"], "prompt": ["Hello", "What is the capital of France?"]}))
        failing.remove()
        assert time.monotonic() - started < 30  # not the 600 s stall timeout
        rows = out.to_pylist()
        assert [r["error_kind"] for r in rows] == ["engine", "engine"]
        assert all("kernel exploded" in r["error"] for r in rows)
        # The manager is restarted: the next batch generates again.
        again = stage(pa.table({"id": ["c"], "prompt": ["Hello"]})).to_pylist()
        assert again[0]["error"] is None and again[0]["generation"] is not None
    finally:
        stage.engine.close()


def _raise_in_generation_thread(*_):
    raise RuntimeError("kernel exploded (injected)")


def test_a_router_that_dies_fails_every_waiting_call_at_once(tiny_model):
    engine = continuous_engine(tiny_model)
    generator = engine.generator
    try:

        def explode(*_):
            raise KeyError("a changed output object")

        generator._update = explode  # the router's handler for each manager output
        prompts = engine.tokenize(["Hello", "The quick brown fox"])
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="continuous router thread died: KeyError"):
            engine.generate([Request(f"r{i}", p, 4) for i, p in enumerate(prompts)])
        assert time.monotonic() - started < 10
        with pytest.raises(RuntimeError, match="router thread died"):  # later calls fail at once too
            engine.generate([Request("late", prompts[0], 2)])
    finally:
        engine.close()
