"""Length-aware batch planning for the padded strategy.

A fixed row count in dataset order pads every short prompt up to the longest one in its batch and
decodes every row to the batch's largest limit. Here a replica's rows are sorted by prompt length and
cut into batches by a token budget (memory) and a row cap; inside a batch, rows are prefilled in groups
whose padding stays under a share of their real prompt tokens, so long and short prompts never share a
padded prefill even when they share decode steps.
"""

from __future__ import annotations

from collections.abc import Iterator

from runner.engine.types import Request


def batch_cost(requests: list[Request], samples: int = 1) -> int:
    """Token positions a padded batch may hold at once: rows x (longest prompt + largest new-token limit)."""
    if not requests:
        return 0
    longest = max(len(r.prompt_ids) for r in requests)
    new = max(r.max_new_tokens for r in requests)
    return len(requests) * samples * (longest + new)


def plan_batches(
    requests: list[Request], token_budget: int, max_batch_size: int, samples: int = 1
) -> Iterator[list[Request]]:
    """Yield batches, longest prompts first, each within the budget and row cap (a lone row always runs)."""
    ordered = sorted(requests, key=lambda r: (len(r.prompt_ids), r.max_new_tokens), reverse=True)
    batch: list[Request] = []
    for request in ordered:
        candidate = batch + [request]
        too_big = batch_cost(candidate, samples) > token_budget or len(candidate) * samples > max_batch_size
        if batch and too_big:
            yield batch
            candidate = [request]
        batch = candidate
    if batch:
        yield batch


def padding_share(lengths: list[int]) -> float:
    """Pad positions of a left-padded prefill of these prompt lengths, as a share of their real tokens."""
    return (len(lengths) * max(lengths) - sum(lengths)) / sum(lengths)


def prefill_groups(lengths: list[int], max_padding: float) -> list[tuple[int, int]]:
    """[start, stop) runs of rows (sorted longest first) prefilled together, each within `max_padding`."""
    groups, start = [], 0
    for i in range(1, len(lengths) + 1):
        if i == len(lengths) or padding_share(lengths[start : i + 1]) > max_padding:
            groups.append((start, i))
            start = i
    return groups
