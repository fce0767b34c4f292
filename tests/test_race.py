"""`auto` races padded and continuous on the job's own rows (runner.engine.race) and keeps the trial."""

from __future__ import annotations

import pytest

from runner.config import BatchingConfig, ModelConfig, SamplingConfig
from runner.engine import Engine, Request
from runner.engine import race as race_module
from runner.engine.race import sample

BATCH = 16  # max_batch_size of these engines: the trial runs 16 rows per strategy, from a 64-row call
MIN_ROWS = 4 * BATCH

WORDS = "the quick brown fox jumps over a lazy dog while seven small birds sing in the old oak tree".split()


def engine(path: str, strategy: str, rows_ahead: int | None = 16 * BATCH) -> Engine:
    """`rows_ahead`: a job long enough for a race to pay (runner.engine.race.PAYS_AFTER_TRIALS)."""
    batching = BatchingConfig(strategy=strategy, token_budget=8192, max_batch_size=BATCH)
    model = ModelConfig(path=path, dtype="float32")
    return Engine(model, SamplingConfig(max_new_tokens=5), batching, rows_ahead=rows_ahead)


def prompts(count: int) -> list[str]:
    return [" ".join(WORDS[: 2 + (i * 7) % len(WORDS)]) + f" {i}" for i in range(count)]


def test_the_trial_sample_is_spread_over_the_lengths_in_two_matched_halves():
    requests = [Request(str(i), [1] * (1 + (i * 37) % 200), 4) for i in range(100)]
    picks = sample(requests, BATCH)
    assert len(picks) == len(set(picks)) == 2 * BATCH
    lengths = [len(requests[i].prompt_ids) for i in picks]
    assert lengths == sorted(lengths) and lengths[0] == 1 and lengths[-1] > 150
    first, second = lengths[0::2], lengths[1::2]
    assert abs(sum(first) - sum(second)) <= max(lengths)  # dealt in turn: the same mix


@pytest.mark.slow
def test_auto_races_both_strategies_keeps_the_trial_rows_and_runs_the_winner(tiny_model):
    """Every row's tokens equal padded's (both strategies are exact; the trial's rows are not run
    again), the decision names the winner with both measured rates, and later calls run on it."""
    reference = engine(tiny_model, "padded")
    texts = prompts(MIN_ROWS + 8)
    requests = [Request(f"r{i}", p, 1 + i % 5) for i, p in enumerate(reference.tokenize(texts))]
    expected = [c.token_ids for c in reference.generate(requests)]
    reference.close()

    auto = engine(tiny_model, "auto")
    assert auto.strategy == "padded" and "raced against continuous" in auto.describe()["strategy_reason"]
    assert auto.race.rows == BATCH and auto.race.min_rows == MIN_ROWS  # each timed on a full batch
    small = auto.generate(requests[: MIN_ROWS - 1])  # too few rows to race on: the current strategy
    assert auto.race.decision is None and [c.token_ids for c in small] == expected[: MIN_ROWS - 1]
    done = auto.generate(requests)
    decision = auto.race.decision
    assert [c.token_ids for c in done] == expected
    assert decision["strategy"] == auto.strategy in ("padded", "continuous")
    assert set(decision["tokens_per_s"]) == {"padded", "continuous"}
    assert auto.describe()["strategy_reason"] == decision["reason"] and "tokens/s" in decision["reason"]
    assert [c.token_ids for c in auto.generate(requests[:3])] == expected[:3]
    auto.close()


def test_a_rival_that_fails_at_start_leaves_the_current_strategy(tiny_model, monkeypatch):
    auto = engine(tiny_model, "auto")
    monkeypatch.setattr(auto.race, "_start", lambda name: (None, "RuntimeError: no paged cache here"))
    requests = [Request(f"r{i}", p, 3) for i, p in enumerate(auto.tokenize(prompts(MIN_ROWS)))]
    done = auto.generate(requests)
    assert all(c.error is None for c in done) and auto.strategy == "padded"
    assert (
        "continuous fails on this model (RuntimeError: no paged cache here)" in auto.race.decision["reason"]
    )
    auto.close()


def test_a_job_too_short_for_a_trial_to_pay_runs_the_devices_strategy_unraced(tiny_model):
    """A race costs the slower strategy's trial rows: with fewer rows ahead than 16 trials' worth,
    told by the job or seen in a call, `auto` keeps the device's strategy and says why."""
    short = engine(tiny_model, "auto", rows_ahead=16 * BATCH - 1)
    assert short.race is None and short.strategy == "padded"
    assert f"not raced against continuous: {16 * BATCH - 1} rows ahead" in short.describe()["strategy_reason"]
    short.close()
    untold = engine(tiny_model, "auto", rows_ahead=None)
    requests = [Request(f"r{i}", p, 2) for i, p in enumerate(untold.tokenize(prompts(MIN_ROWS)))]
    untold.generate(requests)  # a call of MIN_ROWS rows, fewer than a race needs ahead: not raced
    assert untold.race.decision is None and untold.strategy == "padded"
    untold.close()


def test_an_explicit_strategy_is_not_raced(tiny_model):
    fixed = engine(tiny_model, "padded")
    assert fixed.race is None and fixed.describe()["strategy_reason"] == "set in config"
    fixed.close()
    assert race_module.MIN_ROWS >= 2 * race_module.ROWS
    assert race_module.ROWS == BatchingConfig().max_batch_size
