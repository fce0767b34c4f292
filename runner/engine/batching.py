"""Length-aware batch planning: sort what a replica received, cut by a token budget.

A fixed row count in dataset order pads every short prompt up to the longest one in its batch and
decodes every row to the batch's largest limit; grouping similar lengths under a budget of token
positions keeps padding small and the batch size large where prompts are short.
"""

from __future__ import annotations

from collections.abc import Iterator

from runner.engine.types import Request


def batch_cost(requests: list[Request], samples: int = 1) -> int:
    """Token positions a padded batch occupies: rows x (longest prompt + largest new-token limit)."""
    if not requests:
        return 0
    longest = max(len(r.prompt_ids) for r in requests)
    new = max(r.max_new_tokens for r in requests)
    return len(requests) * samples * (longest + new)


def plan_batches(
    requests: list[Request], token_budget: int, max_batch_size: int, samples: int = 1
) -> Iterator[list[Request]]:
    """Yield batches, longest prompts first, each within the budget (a lone oversized row still runs)."""
    ordered = sorted(requests, key=lambda r: (len(r.prompt_ids), r.max_new_tokens), reverse=True)
    batch: list[Request] = []
    for request in ordered:
        candidate = batch + [request]
        too_big = batch_cost(candidate, samples) > token_budget or len(candidate) > max_batch_size
        if batch and too_big:
            yield batch
            candidate = [request]
        batch = candidate
    if batch:
        yield batch
