"""Batch planning for the padded strategy: pure functions over request lengths, no model needed."""

from __future__ import annotations

import random

import pytest

from runner.engine.batching import batch_cost, padding_share, plan_batches, prefill_groups
from runner.engine.types import Request


def req(i: int, prompt: int, new: int = 8) -> Request:
    return Request(f"r{i}", [1] * prompt, new)


@pytest.fixture
def mixed() -> list[Request]:
    rng = random.Random(0)
    return [req(i, int(16 * 100 ** rng.random()), rng.randint(8, 64)) for i in range(200)]


def test_every_request_is_planned_exactly_once(mixed):
    planned = [r.id for batch in plan_batches(mixed, 4096, 16) for r in batch]
    assert sorted(planned) == sorted(r.id for r in mixed)


def test_batches_go_longest_first(mixed):
    firsts = [len(batch[0].prompt_ids) for batch in plan_batches(mixed, 4096, 16)]
    assert firsts == sorted(firsts, reverse=True)


def test_budget_and_rows_are_respected(mixed):
    batches = list(plan_batches(mixed, 4096, 16, samples=2))
    for batch in batches:
        assert len(batch) == 1 or batch_cost(batch, samples=2) <= 4096
        assert len(batch) * 2 <= 16
    assert max(len(b) for b in batches) == 8


def test_an_oversized_row_still_runs_alone():
    batches = list(plan_batches([req(0, 5000), req(1, 10)], token_budget=1024, max_batch_size=8))
    assert [[r.id for r in b] for b in batches] == [["r0"], ["r1"]]


def test_prefill_groups_keep_long_and_short_prompts_apart():
    assert prefill_groups([1000, 990, 20, 18, 3], max_padding=0.1) == [(0, 2), (2, 4), (4, 5)]
    assert prefill_groups([1000, 990, 20, 18, 3], max_padding=100.0) == [(0, 5)]
    assert prefill_groups([7], max_padding=0.0) == [(0, 1)]


def test_prefill_groups_stay_under_the_padding_share(mixed):
    lengths = sorted((len(r.prompt_ids) for r in mixed), reverse=True)
    groups = prefill_groups(lengths, max_padding=0.1)
    assert [i for a, b in groups for i in range(a, b)] == list(range(len(lengths)))
    assert all(padding_share(lengths[a:b]) <= 0.1 for a, b in groups)
    assert len(groups) < len(lengths) / 2  # similar lengths do share a prefill


def test_padding_share_counts_pads_against_real_prompt_tokens():
    assert padding_share([10, 10]) == 0
    assert padding_share([10, 5]) == pytest.approx(5 / 15)
