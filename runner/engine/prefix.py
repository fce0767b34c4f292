"""Shared prompt prefixes: found from the tokens, their keys and values computed once, expanded per batch.

Dataset-generation jobs send one long system prompt or few-shot block with every row, and a multiple-choice
question scores several continuations of one context. Rows whose token ids begin with the same prefix
(at least `batching.prefix_min_tokens` of them) form a group; the prefix's keys and values are computed
once (one row, no padding) and kept in a small per-replica `PrefixStore`, so later batches with the same
prefix reuse them; each row of the group then prefills only its own suffix over a copy of them.

No declaration is needed: groups come from the token ids alone. The rows of a batch are sorted by their
ids, so rows sharing a prefix are neighbours and a group's prefix is the longest common prefix of a run
of neighbours; the runs are chosen to save the most prompt tokens (a short prefix common to everything
does not swallow a long one common to half the rows). vLLM's automatic prefix caching and SGLang's
RadixAttention find shared prefixes from the tokens the same way (by hashed KV blocks, by a radix tree
over the running requests); this is the static-batch form of it.

Exactness. A key or value of a causal model at position p depends only on tokens 0..p, so the prefix's
keys and values are the ones every row computes for its first tokens. The padded layout is kept: each
row is left-padded to its group's width, so the prefix starts at a different column in each row; the
cached columns are shifted per row, and the last few prefix tokens of a shorter row fall in the suffix
chunk and are computed there again (what padding would have cost). A row's real tokens stay
contiguous, so sliding-window masks (counted in cache columns) see exactly what they see unbatched,
whatever the prefix's length against the window (runner.engine.kv_cache keeps every column).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from runner.engine.batching import prefill_groups
from runner.engine.forward import KV, Forward, prefill
from runner.engine.kv_cache import full_cache

log = logging.getLogger(__name__)


@dataclass
class Group:
    """Rows (indices into the batch) whose first `shared` prompt tokens are the same; 0: none shared."""

    rows: list[int]
    shared: int = 0


def common_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` have in common."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low], a[:high] != b[:high]: halve with slice compares (C speed)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if a[:mid] == b[:mid] else (low, mid)
    return low


def share_groups(prompts: list[list[int]], min_tokens: int) -> list[Group]:
    """Partition rows into groups sharing a prefix of at least `min_tokens`, saving the most tokens.

    Each row keeps at least its last token to prefill (it gives the row's first logits). Rows that
    share nothing worth it come back together as one group with `shared` 0."""
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    caps = [len(prompts[i]) - 1 for i in order]
    near = [common_length(prompts[a], prompts[b]) for a, b in zip(order, order[1:], strict=False)]
    # best[j]: most tokens saved by the first j sorted rows; start[j]: where its last run starts.
    best, start = [0] * (len(order) + 1), [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        best[j], start[j], shared = best[j - 1], j - 1, caps[j - 1]
        for i in range(j - 2, -1, -1):  # the run order[i:j], its prefix the min over neighbours
            shared = min(shared, near[i], caps[i])
            if shared < min_tokens:
                break
            if best[i] + (j - 1 - i) * shared > best[j]:
                best[j], start[j] = best[i] + (j - 1 - i) * shared, i
    groups, alone, j = [], [], len(order)
    while j > 0:
        i = start[j]
        rows = order[i:j]
        if len(rows) > 1:
            shared = min(min(near[i : j - 1]), min(caps[i:j]))
            groups.append(Group(sorted(rows), shared))
        else:
            alone += rows
        j = i
    return ([Group(sorted(alone))] if alone else []) + groups[::-1]


@dataclass
class _Entry:
    tokens: list[int]
    kv: KV  # one row


class PrefixStore:
    """Keys and values of the prefixes computed lately on this replica, one row each (most recent kept).

    A request for a prefix reuses the longest common start of any kept entry (the first k columns of a
    prefix's cache are the cache of its first k tokens) and computes only the rest. Entries are kept
    while their tokens together stay within `capacity` positions (default: BUDGET_SHARE of the token
    budget), least recently used dropped first; the newest is always kept."""

    BUDGET_SHARE = 1 / 16  # of the replica's token budget (runner.engine.memory): kept prefixes are a bonus

    def __init__(self, model, capacity: int):
        self.model = model
        self.capacity = capacity
        self.computed = 0  # prefix tokens computed for the store, over its life
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()

    def longest(self, tokens: list[int], adapter: str | None) -> tuple[tuple | None, int]:
        """The kept entry with the longest common start with `tokens` (key, length), or (None, 0)."""
        key, reuse = None, 0
        for k, entry in self._entries.items():
            if k[0] == adapter and (n := common_length(entry.tokens, tokens)) > reuse:
                key, reuse = k, n
        return key, reuse

    def get(self, tokens: list[int], adapter: str | None, forward: Forward) -> KV:
        """The prefix's (keys, values) per layer, [1, kv_heads, len(tokens), head_dim]."""
        key, reuse = self.longest(tokens, adapter)
        if key is not None:
            self._entries.move_to_end(key)
        if reuse == len(tokens):
            return [(k[:, :, :reuse], v[:, :, :reuse]) for k, v in self._entries[key].kv]
        kv = self._extend(self._entries[key].kv if key else None, reuse, tokens, forward)
        if key is not None and reuse == len(self._entries[key].tokens):
            del self._entries[key]  # the new entry starts with all of it
        self._entries[(adapter, len(tokens), hash(tuple(tokens)))] = _Entry(list(tokens), kv)
        self._evict()
        return kv

    def _extend(self, kept: KV | None, reuse: int, tokens: list[int], forward: Forward) -> KV:
        """Compute tokens[reuse:] over the kept entry's first `reuse` columns."""
        cache = full_cache(self.model.config)
        if kept is not None and reuse:
            for layer, (k, v) in zip(cache.layers, kept, strict=True):
                layer.update(k[:, :, :reuse], v[:, :, :reuse])
        device = self.model.device
        ids = torch.tensor([tokens[reuse:]], device=device)
        mask = torch.ones((1, len(tokens)), dtype=torch.long, device=device)
        positions = torch.arange(reuse, len(tokens), device=device)[None]
        forward(ids, mask, positions, cache)
        self.computed += len(tokens) - reuse
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _evict(self) -> None:
        while len(self._entries) > 1 and sum(len(e.tokens) for e in self._entries.values()) > self.capacity:
            self._entries.popitem(last=False)


class SharedPrefill:
    """Prefills a batch of prompts left-padded to one width, each shared prefix computed once.

    `forward` runs the model (the caller's: it decides which logits come back). Rows are prefilled in
    groups of similar suffix length (`max_padding`, as runner.engine.batching.prefill_groups)."""

    def __init__(self, model, pad_id: int, max_padding: float, min_tokens: int, store: PrefixStore):
        self.model = model
        self.pad_id = pad_id
        self.max_padding = max_padding
        self.min_tokens = min_tokens
        self.store = store
        self.reused = 0  # prompt tokens rows took from a shared prefix's cache, over this object's life

    @property
    def tokens_saved(self) -> int:
        """Prompt tokens not computed thanks to sharing: taken from a shared cache, less its computing
        (0 when sharing failed after computing a prefix: nothing was saved)."""
        return max(self.reused - self.store.computed, 0)

    def layout(self, prompts: list[list[int]], adapter: str | None, forward: Forward) -> Layout:
        """The rows' groups, and each shared group's prefix (keys, values), computed or kept."""
        groups = self._groups(prompts, adapter)
        prefixes = [self._shared_kv(prompts[g.rows[0]], g.shared, adapter, forward) for g in groups]
        return Layout(groups, prefixes, len(prompts))

    def __call__(
        self, prompts: list[list[int]], width: int, adapter: str | None, forward: Forward
    ) -> tuple[torch.Tensor, KV]:
        """`fill` on the copy path: every row's cache holds its whole prompt."""
        return self.fill(prompts, width, self.layout(prompts, adapter, forward), forward)

    def fill(
        self,
        prompts: list[list[int]],
        width: int,
        layout: Layout,
        forward: Forward,
        attend: Callable[[list[int], KV], AbstractContextManager] | None = None,
    ) -> tuple[torch.Tensor, KV]:
        """(logits of each prompt's last position, (keys, values) per layer [rows, heads, width, dim]),
        rows in `prompts` order, right-aligned at `width`; `fill_parts` joined."""
        return _in_order(*self.fill_parts(prompts, layout, forward, attend), width)

    def fill_parts(
        self,
        prompts: list[list[int]],
        layout: Layout,
        forward: Forward,
        attend: Callable[[list[int], KV], AbstractContextManager] | None = None,
    ) -> tuple[list[tuple[torch.Tensor, KV]], list[int]]:
        """The prefill in parts: (logits, (keys, values) per layer) of consecutive rows, each part
        left-padded to its own longest row only, and `order`, the prompt index of each row of the
        parts in turn. The padded decode layout writes the parts into its cache where they go (no
        joined copy); `fill` joins them in prompt order.

        Without `attend` (the copy path) every row's cache holds its whole prompt, the shared columns
        copied from the prefix's. With `attend(groups, prefix)`, a context in which the model's
        attention reads the prefix from that one copy (runner.engine.cascade), a shared row's cache
        holds only its suffix."""
        parts, order = [], []
        for group, shared in zip(layout.groups, layout.prefixes, strict=True):
            rows = sorted(group.rows, key=lambda r: len(prompts[r]), reverse=True)
            suffixes = [len(prompts[r]) - group.shared for r in rows]
            for start, stop in prefill_groups(suffixes, self.max_padding):
                part = [prompts[r] for r in rows[start:stop]]
                if attend is None or shared is None:
                    parts.append(self._prefill(part, group.shared, shared, forward))
                else:
                    parts.append(self._suffixes(part, group.shared, shared, forward, attend))
                order += rows[start:stop]
        return parts, order

    def _groups(self, prompts: list[list[int]], adapter: str | None) -> list[Group]:
        """`share_groups`, and a row sharing nothing with the others of its batch alone takes what it
        shares with a prefix kept from an earlier batch."""
        groups = share_groups(prompts, self.min_tokens)
        alone = next((g for g in groups if not g.shared), None)
        if alone is None:
            return groups
        groups.remove(alone)
        for row in list(alone.rows):
            kept = min(self.store.longest(prompts[row], adapter)[1], len(prompts[row]) - 1)
            if kept >= self.min_tokens:
                alone.rows.remove(row)
                groups.append(Group([row], kept))
        return ([alone] if alone.rows else []) + groups

    def _shared_kv(self, prompt: list[int], shared: int, adapter: str | None, forward: Forward) -> KV | None:
        if not shared:
            return None
        return self.store.get(prompt[:shared], adapter, forward)

    def _prefill(
        self, prompts: list[list[int]], shared: int, kv: KV | None, forward: Forward
    ) -> tuple[torch.Tensor, KV]:
        """Rows (longest first) left-padded together; their first `shared` columns from `kv`."""
        cached = None
        if kv is not None:
            shifts = [max(len(p) for p in prompts) - len(p) for p in prompts]
            self.reused += sum(max(shared - s, 0) for s in shifts)
            cached = [(shifted(keys, shifts), shifted(values, shifts)) for keys, values in kv]
        width = max(len(p) for p in prompts)
        return prefill(self.model, forward, prompts, self.pad_id, width, skip=shared, cached=cached)

    def _suffixes(self, prompts: list[list[int]], shared: int, kv: KV, forward: Forward, attend):
        """Rows of one group prefilled past their `shared` prefix, attending to it through `attend`:
        their caches hold only the suffixes, left-padded to the longest."""
        suffixes = [p[shared:] for p in prompts]
        with attend([0] * len(prompts), [kv]):
            done = prefill(self.model, forward, suffixes, self.pad_id, max(map(len, suffixes)), offset=shared)
        self.reused += shared * len(prompts)
        return done


@dataclass
class Layout:
    """How a batch's rows share: the groups (one may share nothing), each one's prefix (keys, values)
    per layer (None where it shares nothing)."""

    groups: list[Group]
    prefixes: list[KV | None]
    rows: int

    @property
    def sharing(self) -> bool:
        return any(g.shared for g in self.groups)

    def cached_lengths(self, prompts: list[list[int]]) -> list[int]:
        """Prompt columns each row keeps in its own cache when its prefix is read from one copy."""
        lengths = [len(p) for p in prompts]
        for group in self.groups:
            for row in group.rows:
                lengths[row] -= group.shared
        return lengths

    def row_groups(self) -> tuple[list[int], list[KV]]:
        """Each row's index into the shared prefixes (-1: it shares nothing), and those prefixes."""
        rows, prefixes = [-1] * self.rows, []
        for group, kv in zip(self.groups, self.prefixes, strict=True):
            if kv is not None:
                for row in group.rows:
                    rows[row] = len(prefixes)
                prefixes.append(kv)
        return rows, prefixes


def _in_order(parts: list[tuple[torch.Tensor, KV]], order: list[int], width: int) -> tuple[torch.Tensor, KV]:
    """The parts' logits and caches joined, each left-padded to `width` columns, their rows put back in
    prompt order (`order`: the prompt index of each joined row)."""
    back = None
    if order != list(range(len(order))):
        back = torch.empty(len(order), dtype=torch.long)
        back[torch.tensor(order)] = torch.arange(len(order))

    def joined(tensors: list[torch.Tensor]) -> torch.Tensor:
        whole = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
        return whole if back is None else whole.index_select(0, back.to(whole.device))

    def padded(tensor: torch.Tensor) -> torch.Tensor:
        pad = width - tensor.shape[2]
        return torch.nn.functional.pad(tensor, (0, 0, pad, 0)) if pad else tensor

    logits = joined([logits for logits, _ in parts])
    layers = [
        (joined([padded(kv[i][0]) for _, kv in parts]), joined([padded(kv[i][1]) for _, kv in parts]))
        for i in range(len(parts[0][1]))
    ]
    return logits, layers


def shifted(one: torch.Tensor, shifts: list[int]) -> torch.Tensor:
    """One row's cache [1, heads, L, dim] as rows [len(shifts), heads, L, dim], row r moved `shifts[r]`
    columns right (zeros before it, its last columns cut)."""
    length, most = one.shape[2], max(shifts)
    padded = torch.nn.functional.pad(one[0], (0, 0, most, 0))  # [heads, most + L, dim]
    columns = (
        torch.arange(length, device=one.device)[None]
        + most
        - torch.tensor(shifts, device=one.device)[:, None]
    )
    return padded[:, columns].transpose(0, 1)
