"""Cascade attention: rows of a padded batch that share a prompt prefix attend to one copy of its keys.

runner.engine.prefix computes a shared prefix's keys and values once, but its copy path then copies
them into every row's cache, and from there on each decode step reads the whole prefix once per row:
on a 1,024-token system prompt and a 64-token question that is ~94% of the keys a step reads, and
the step is bound by that reading (measured on CPU: sharing only the prefill sped a whole job up 1.3x).
Here a row's cache holds only its own tokens (the suffix of its prompt and what it generates), and the
attention of a layer is computed in two parts:

- the queries of all the rows of a group against the group's single prefix copy, as one matrix
  product per key/value head (queries of every row and head stacked: [rows x heads/kv_heads, dim] x
  [dim, prefix]), so the prefix is read once per step, not once per row;
- each row's queries against its own cache, under the model's own mask (padding, causality);

then one softmax over the concatenated scores (every query sees the whole prefix: its position is
after it) and the weighted sum of both value parts. This is FlashInfer's cascade inference and vLLM's
cascade attention (a shared prefix, then per-request suffixes), written with plain matrix products
because transformers' SDPA layers take one dense key/value tensor per row. The softmax is in float32
as transformers' eager attention computes it; the result equals per-row SDPA within float rounding
(greedy outputs are checked against `model.generate` in tests/test_prefix.py).

Where it applies: a model whose attention is transformers' "sdpa" function and that has no
sliding-window layers (a window counts cache columns back from the query, and the prefix columns are
no longer in the row's cache), no soft-capping, sinks or position bias. Elsewhere the copy path runs
(runner.engine.prefix). A forward in which not every layer came here (a model whose layers call the
attention some other way) raises `NotCascadable`, and the caller falls back to the copy path.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from runner import compat
from runner.engine import ragged
from runner.engine.architecture import Architecture
from runner.engine.paged_attention import visible

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values) [1, kv_heads, prefix, head_dim]

_local = threading.local()  # the `Shared` of the forward running on this thread, if any
_lock = threading.Lock()
_installed = False
_wrapped = None  # the "sdpa" function install() wrapped: rows that share nothing are computed by it
SCORES_BYTES = 256 * 2**20  # float32 attention scores computed at once (rows are sliced to fit)
calls = 0  # layer calls computed here since the process started (tests check the path is taken)


class NotCascadable(RuntimeError):
    """This model's attention cannot be computed in two parts (the copy path runs instead)."""


@dataclass
class Shared:
    """The shared prefixes of the rows of one forward.

    `prefixes[g]`: group g's prefix (keys, values) per layer; `groups[r]`: the group of row r, or -1
    for a row that shares nothing (it attends to its own cache only)."""

    prefixes: list[KV]
    groups: list[int]
    layers: set = field(default_factory=set)  # layer indices computed in the current forward
    split: tuple[int, int, int] | None = None  # this decode step's row split (runner.engine.ragged)
    # (group, device, rows) -> row indices. Rows only ever leave a batch (runner.engine.layouts.Batch
    # .remove rearranges `groups`), so the row count names the current arrangement.
    _index: dict = field(default_factory=dict, repr=False)

    def rows_of(self, group: int, device) -> torch.Tensor:
        key = (group, device, len(self.groups))
        if key not in self._index:
            rows = [r for r, g in enumerate(self.groups) if g == group]
            self._index[key] = torch.tensor(rows, dtype=torch.long, device=device)
        return self._index[key]


def unsupported(model, arch: Architecture) -> str | None:
    """Why cascade attention cannot run on `model` (whose `arch` is given), or None when it can."""
    implementation = compat.attn_implementation(model)
    if implementation != "sdpa":
        return f"its attention is {implementation!r}, not 'sdpa'"
    # Layer types as transformers' own caches infer them (a Mistral-style `sliding_window` included).
    # Whether the layers call the attention function at all is found at the first forward (`attending`):
    # the model class flag `_supports_attention_backend` is False for some that do (StableLM).
    if other := sorted(set(arch.layer_types) - {"full_attention"}):
        return f"it has {other} layers"
    config = model.config.get_text_config(decoder=True)
    for name in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, name, None):
            return f"it soft-caps ({name})"
    return None


@contextmanager
def attending(shared: Shared, layers: int):
    """Run the model's forwards on this thread with `shared` prefixes; each forward must reach the
    cascade in all its `layers` (else `NotCascadable`)."""
    install()
    _local.shared = shared
    shared.layers = set()
    try:
        yield
    finally:
        _local.shared = None
    if len(shared.layers) != layers:
        raise NotCascadable(f"{len(shared.layers)} of {layers} layers called the SDPA attention function")


def install() -> None:
    """Wrap the registered "sdpa" attention function (idempotent): calls made inside `attending` come
    here, every other call goes to the wrapped function unchanged."""
    global _installed
    with _lock:
        if _installed:
            return
        from transformers import AttentionInterface

        global _wrapped
        wrapped = _wrapped = AttentionInterface()["sdpa"]

        def sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
            shared = getattr(_local, "shared", None)
            if shared is None:
                return wrapped(
                    module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
                )
            return _cascade(shared, module, query, key, value, attention_mask, scaling, kwargs)

        AttentionInterface.register("sdpa", sdpa)
        _installed = True


def _cascade(shared: Shared, module, query, key, value, attention_mask, scaling, kwargs: dict):
    """[rows, heads, q, dim] queries over each row's prefix and own keys -> ([rows, q, heads, dim], None)."""
    for name, extra in compat.attention_extras(module, kwargs).items():
        if extra is not None:
            raise NotCascadable(f"the layer passes {name}")
    global calls
    calls += 1
    layer = compat.layer_index(module)
    shared.layers.add(layer)
    rows, heads, q_len, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    rep = heads // kv_heads
    out = None  # [rows, q, heads, dim], as transformers' attention functions return it
    alone = shared.rows_of(-1, query.device)
    if 2 * len(alone) >= rows:
        # Most rows share nothing: the model's own SDPA over every row, on views of the cache (no
        # copies, the fused kernel); the sharing rows' outputs are replaced below. Copying out the
        # keys of the rows that share nothing costs more than their attention (measured on CPU: a
        # batch in which 2 of 64 rows shared a prefix decoded 1.5x slower with every row here).
        out = _plain(module, query, key, value, attention_mask, scaling, kwargs, shared.split)
    elif len(alone):
        mask = attention_mask.index_select(0, alone) if _per_row(attention_mask) else attention_mask
        pick = (t.index_select(0, alone) for t in (query, key, value))
        out = query.new_empty(rows, q_len, heads, dim)
        out.index_copy_(0, alone, _plain(module, *pick, mask, scaling, kwargs))
    scaling = scaling if scaling is not None else dim**-0.5
    # Query head h reads key/value head h // rep (transformers' repeat_kv): stack a kv head's queries.
    stacked = query.reshape(rows, kv_heads, rep * q_len, dim)
    hidden = _hidden(attention_mask, q_len, length, query.device)
    if out is None:
        out = query.new_empty(rows, q_len, heads, dim)
    for group in sorted(set(shared.groups) - {-1}):
        prefix = shared.prefixes[group][layer]
        columns = length + prefix[0].shape[2]
        # Bound the float32 scores a slice of rows holds (a long suffix prefill: q_len in the hundreds).
        step = max(1, SCORES_BYTES // (heads * q_len * columns * 4))
        for part in shared.rows_of(group, query.device).split(step):
            mask = hidden.index_select(0, part) if hidden is not None and hidden.shape[0] > 1 else hidden
            attended = _rows(
                stacked.index_select(0, part),
                key.index_select(0, part),
                value.index_select(0, part),
                mask,
                prefix,
                scaling,
                rep,
                q_len,
            )
            out.index_copy_(0, part, attended.reshape(len(part), heads, q_len, dim).transpose(1, 2))
    return out, None


def _per_row(mask) -> bool:
    return mask is not None and mask.dim() > 0 and mask.shape[0] > 1


def _plain(module, query, key, value, attention_mask, scaling, kwargs: dict, split=None) -> torch.Tensor:
    """The attention function the cascade wraps (transformers' SDPA), for rows that share nothing:
    their output exactly as without prefix sharing, split by rows where `split` applies
    (runner.engine.ragged). [rows, q, heads, dim]."""
    if _wrapped is None:
        install()
    if split is not None and ragged.applies(split, module, query, key, attention_mask, kwargs):
        return ragged.in_two_parts(
            _wrapped, split, module, query, key, value, attention_mask, scaling, kwargs
        )
    return _wrapped(module, query, key, value, attention_mask, dropout=0.0, scaling=scaling, **kwargs)[0]


def _rows(stacked, key, value, hidden, prefix, scaling: float, rep: int, q_len: int) -> torch.Tensor:
    """Attention of some rows ([n, kv_heads, rep * q, dim] queries) over their own keys and, with
    `prefix`, over that one (keys, values) copy first: one softmax over both parts."""
    n, kv_heads, _, dim = stacked.shape
    length = key.shape[2]
    own = torch.matmul(stacked, key.transpose(-1, -2)).float() * scaling  # [n, kv, rep*q, L]
    own = own.view(n, kv_heads, rep, q_len, length)
    if hidden is not None:
        own = own.masked_fill(hidden, torch.finfo(own.dtype).min)
    if prefix is None:
        weights = torch.softmax(own, dim=-1).to(value.dtype).view(n, kv_heads, rep * q_len, length)
        return torch.matmul(weights, value)
    keys, values = prefix
    width = keys.shape[2]
    # [kv, n * rep * q, dim] x [kv, dim, P]: the prefix is read once for all these rows' queries.
    queries = stacked.transpose(0, 1).reshape(kv_heads, n * rep * q_len, dim)
    first = torch.matmul(queries, keys[0].transpose(-1, -2)).float() * scaling
    first = first.view(kv_heads, n, rep, q_len, width).transpose(0, 1)
    weights = torch.softmax(torch.cat([first, own], dim=-1), dim=-1).to(value.dtype)
    to_prefix = weights[..., :width].transpose(0, 1).reshape(kv_heads, n * rep * q_len, width)
    out = torch.matmul(to_prefix, values[0]).view(kv_heads, n, rep * q_len, dim).transpose(0, 1)
    return out + torch.matmul(weights[..., width:].reshape(n, kv_heads, rep * q_len, length), value)


def _hidden(attention_mask, q_len: int, length: int, device) -> torch.Tensor | None:
    """Boolean [rows or 1, 1, 1, q, L], True where a query must not see a key of its own cache."""
    if attention_mask is None:
        seen = visible(q_len, length, None, device)
        return None if seen is None else ~seen.view(1, 1, 1, q_len, length)
    mask = attention_mask[..., -q_len:, -length:]
    hidden = ~mask if mask.dtype == torch.bool else mask < torch.finfo(mask.dtype).min / 2  # additive
    return hidden.unsqueeze(2)
