"""Decode-step attention of a padded batch whose rows are of very different lengths, in two parts.

The padded decode cache (runner.engine.kv_cache) holds every row right-aligned at the same column, so
a decode step's attention reads every row over the longest live row's columns: a 30-token row next
to a 1,000-token one reads ~970 padding columns, masked, at every step, and the step's attention
costs rows x longest. That is what a paged kernel (vLLM's, FlashInfer's) avoids by reading each
row's own pages; transformers' SDPA layers take one dense key tensor per call instead.

Here the rows are split at a column: the rows whose first token lies before it (with every row
sitting between them in the cache) attend over all the columns, the rows after them over the
columns from the split on, as two SDPA calls on views of the same cache (nothing is copied). Each
row still attends to all of its own keys in one call, so nothing is merged and the result is the
model's own attention: the columns left out are ones its mask hides. The cache moves only the last
row into a finished row's slot, so the long rows (placed first) stay at the front of the cache and
the split keeps paying as rows finish.

`split_point` chooses the split from each row's first column (or none, where it saves too little);
`split` gives it in the form the attention calls take; `splitting` runs a forward with it (the
plain padded layout), and the cascade attention of a batch sharing a prefix (runner.engine.cascade)
uses `in_two_parts` for its rows' own keys. Only layers that call transformers' "sdpa" attention
function with no position bias are split; any other call passes through unchanged.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

from runner import compat

_local = threading.local()  # (rows, split row, split column) of the forward running on this thread
_lock = threading.Lock()
_installed = False
MIN_SAVING = 0.25  # split only when it leaves out at least this share of the columns read
calls = 0  # layer calls split here since the process started (tests check the path is taken)


def split_point(firsts: list[int], columns: int) -> tuple[int, int] | None:
    """(row, column): rows [0, row) attend over every column, rows [row, ...) from `column` on.

    `firsts[r]`: the first column row r uses (its left padding before it); `columns`: the columns the
    step reads (the view starts at min(firsts)). None where the best split leaves out less than
    MIN_SAVING of the columns read."""
    start, rows = min(firsts), len(firsts)
    whole = rows * (columns - start)
    best, choice = whole, None
    last = -1  # the highest slot of a row that starts before the candidate column
    order = sorted(range(rows), key=firsts.__getitem__)
    for i, slot in enumerate(order):
        last = max(last, slot)
        column = firsts[order[i + 1]] if i + 1 < rows else None
        if column is None or column == firsts[slot]:
            continue  # the next distinct first column is the candidate
        split = last + 1  # rows before it must see the columns before `column`
        cost = split * (columns - start) + (rows - split) * (columns - column)
        if cost < best:
            best, choice = cost, (split, column)
    if choice is None or best > (1 - MIN_SAVING) * whole:
        return None
    return choice


def split(firsts: list[int], columns: int, start: int) -> tuple[int, int, int] | None:
    """This decode step's split as the attention calls take it: (rows, split row, split column
    counted in the cache's view, which starts at column `start`), or None (`split_point`)."""
    point = split_point(firsts, columns)
    return None if point is None else (len(firsts), point[0], point[1] - start)


@contextmanager
def splitting(step_split: tuple[int, int, int] | None):
    """Run the forwards on this thread with decode attention split as `step_split` (`split`) says.
    None: nothing changes."""
    if step_split is None:
        yield
        return
    install()
    _local.split = step_split
    try:
        yield
    finally:
        _local.split = None


def install() -> None:
    """Wrap the registered "sdpa" attention function (idempotent): calls made inside `splitting`
    come here, every other call goes to the wrapped function unchanged."""
    global _installed
    with _lock:
        if _installed:
            return
        from transformers import AttentionInterface

        wrapped = AttentionInterface()["sdpa"]

        def sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
            split = getattr(_local, "split", None)
            if split is None or not applies(split, module, query, key, attention_mask, kwargs):
                return wrapped(
                    module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
                )
            return in_two_parts(
                wrapped, split, module, query, key, value, attention_mask, scaling, kwargs
            ), None

        AttentionInterface.register("sdpa", sdpa)
        _installed = True


def applies(split, module, query, key, attention_mask, kwargs: dict) -> bool:
    """Whether this attention call is a decode step over the batch `split` was chosen for."""
    rows, _, column = split
    if query.shape[2] != 1 or query.shape[0] != rows or key.shape[0] != rows or key.shape[2] <= column:
        return False
    if attention_mask is not None and attention_mask.dim() != 4:
        return False
    return compat.attention_extras(module, kwargs)["position_bias"] is None


def in_two_parts(attend, split, module, query, key, value, attention_mask, scaling, kwargs: dict):
    """`attend` (an attention function) on the rows before the split over every column, and on the
    rows from it over the columns from the split's on: [rows, 1, heads, dim], as `attend` returns."""
    global calls
    calls += 1
    _, row, column = split
    outputs = []
    for rows, columns in ((slice(0, row), slice(None)), (slice(row, None), slice(column, None))):
        mask = attention_mask
        if mask is not None:
            mask = mask[rows if mask.shape[0] > 1 else slice(None), ..., columns]
        part = attend(
            module,
            query[rows],
            key[rows, :, columns],
            value[rows, :, columns],
            mask,
            scaling=scaling,
            **kwargs,
        )
        outputs.append(part[0])
    return torch.cat(outputs)
