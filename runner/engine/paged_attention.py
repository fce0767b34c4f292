"""Per-sequence attention for transformers' continuous batching when the model does not run FlashAttention.

With FlashAttention-2 the continuous batching manager calls a varlen kernel: each packed sequence
attends only to its own keys. Its SDPA fallback instead builds one dense mask over the whole packed
batch and computes every query against every cached key of every request, so a decode step over B
rows costs B times the attention it needs. That is what it lacks on CPU and on GPUs without flash_attn.

`install()` wraps transformers' "sdpa" and "paged|eager" attention functions (continuous batching
switches an eager model to the latter): calls of a continuous batching step (the paged cache passed in,
transformers <= 5.23, or its packed layout in the kwargs, >= 5.24: runner.compat.packed_call) are
computed sequence by sequence, with PyTorch's own varlen FlashAttention kernel on CUDA in half precision and one SDPA
call per sequence otherwise; every other call goes to the original function unchanged, so padded
batches and `model.generate` are untouched. From transformers 5.24 its own paged SDPA path is exact
and faster for plain SDPA layers (measured: `_transformers_exact`), so there only eager layers (soft-
capping, sinks, which its eager path ignores or handles differently) come here.

Each sequence gets the attention its layer asks for, as the model's own eager / flash code computes it:
- a sliding window (`sliding_window`, as the model passes it to FlashAttention, else the window of
  the layer's cache group): a query sees keys less than `window` positions back. The paged cache of a
  sliding group returns only the last `window - 1` cached keys plus the new ones (transformers
  cache_allocators/sliding_attention.py get_read_indices), contiguous in position, so counting back
  from the query's column is exact; a prefill chunk longer than the window needs the window mask;
- logit soft-capping (`softcap`, Gemma 2): `tanh(scores / cap) * cap` before the mask
  (transformers' own paged eager path, integrations/eager_paged.py, ignores it);
- attention sinks (`s_aux` / `module.sinks`, GPT-OSS): one extra logit per head in the softmax, dropped
  after it (models/gpt_oss eager_attention_forward).
Softcaps and sinks have no SDPA form: those layers use the eager formula per sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runner import compat

_installed = False
# Attention calls computed here (per sequence) since the process started: tests check the path is taken.
calls = 0


def _varlen_kernel_usable(query: torch.Tensor) -> bool:
    return query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and compat.varlen_available()


def _torch_varlen(query, key, value, kwargs: dict, scaling, window: int | None) -> torch.Tensor | None:
    """[1, heads, q, d] -> [1, q, heads, d] with PyTorch's varlen FlashAttention (bottom-right causal);
    None where this torch's kernel cannot run the layer (runner.compat.torch)."""
    cu_q, cu_k, max_q, max_k = compat.packed_lengths(kwargs)
    out = compat.varlen_attention(
        query[0].transpose(0, 1),
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
        cu_q.to(torch.int32),
        cu_k.to(torch.int32),
        int(max_q),
        int(max_k),
        scaling,
        window,
    )
    return None if out is None else out.unsqueeze(0)


def visible(q_len: int, k_len: int, window: int | None, device) -> torch.Tensor | None:
    """Boolean [q_len, k_len]: query i (the last q_len positions) sees keys up to its own position and,
    with a window, less than `window` positions back. None when it sees every key."""
    if q_len == 1 and (window is None or k_len <= window):
        return None
    rows = torch.arange(q_len, device=device).unsqueeze(1) + (k_len - q_len)
    cols = torch.arange(k_len, device=device).unsqueeze(0)
    seen = cols <= rows
    return seen & (cols > rows - window) if window else seen


def _eager(query, key, value, mask, scaling: float, softcap: float | None, sinks) -> torch.Tensor:
    """One sequence [1, heads, q, d] with the eager formula: soft-capping and sinks as the models do."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    if sinks is None:
        weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    else:
        sink = sinks.reshape(1, -1, 1, 1).expand(1, -1, scores.shape[-2], 1).to(scores.dtype)
        scores = torch.cat([scores, sink], dim=-1)
        scores = scores - scores.max(dim=-1, keepdim=True).values
        weights = F.softmax(scores, dim=-1, dtype=scores.dtype)[..., :-1].to(value.dtype)
    return torch.matmul(weights, value)


def _sequence_loop(query, key, value, kwargs: dict, scaling, layer: dict | None = None) -> torch.Tensor:
    """[1, heads, q, d] -> [1, q, heads, d], one attention call per packed sequence.

    `layer`: the layer's window, softcap, sinks and whether it runs eager (see `_layer_attention`)."""
    layer = layer or {}
    window, softcap, sinks = layer.get("window"), layer.get("softcap"), layer.get("sinks")
    eager = layer.get("eager") or softcap is not None or sinks is not None
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    cu_q, cu_k = (lengths.tolist() for lengths in compat.packed_lengths(kwargs)[:2])
    out = torch.zeros_like(query)  # positions past the last sequence (graph padding) stay defined
    for q0, q1, k0, k1 in zip(cu_q, cu_q[1:], cu_k, cu_k[1:], strict=False):
        q_len, k_len = q1 - q0, k1 - k0
        if q_len == 0:
            continue
        q, k, v = query[:, :, q0:q1], key[:, :, k0:k1], value[:, :, k0:k1]
        mask = visible(q_len, k_len, window, query.device)
        if eager:
            out[:, :, q0:q1] = _eager(q, k, v, mask, scaling, softcap, sinks)
        else:
            out[:, :, q0:q1] = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=scaling, enable_gqa=key.shape[1] != query.shape[1]
            )
    return out.transpose(1, 2)


def _layer_attention(module, cache, kwargs: dict, eager: bool) -> dict:
    """What this layer's attention computes besides causal softmax: window, softcap, sinks."""
    extras = compat.attention_extras(module, kwargs)
    window = extras["sliding_window"]
    if window is None and cache is not None:
        window = compat.paged_layer_window(cache, compat.layer_index(module))
    return {"window": window, "softcap": extras["softcap"], "sinks": extras["sinks"], "eager": eager}


def _paged(module, query, key, value, cache, scaling, kwargs: dict, eager: bool):
    """Attention of one layer over the packed sequences of a continuous batching step. `cache`: the
    paged cache to write this step's keys/values into first (transformers <= 5.23), or None when the
    layer already did (>= 5.24; see runner.compat.packed_call)."""
    layer = _layer_attention(module, cache, kwargs, eager)
    if cache is not None:
        key, value = compat.paged_update(cache, module, key, value, kwargs)
    global calls
    calls += 1
    plain = not (eager or layer["softcap"] is not None or layer["sinks"] is not None)
    if plain and _varlen_kernel_usable(query):
        out = _torch_varlen(query, key, value, kwargs, scaling, layer["window"])
        if out is not None:
            return out.contiguous(), None
    return _sequence_loop(query, key, value, kwargs, scaling, layer).contiguous(), None


def _transformers_exact(module, kwargs: dict, eager: bool) -> bool:
    """Whether transformers' own paged path computes this layer exactly and faster (>= 5.24): plain
    SDPA layers, windowed or not. Measured on 5.24.0 (scripts/bench_paged_attention.py, 32 rows, CPU):
    equal to padded on every row and 3.7x the tokens/s of the per-sequence loop, whose Python loop per
    sequence and layer costs more than the dense mask it saves at these sizes. Its eager path ignores
    soft-capping (integrations/eager_paged.py) and a sink-less SDPA has no sinks: those stay ours."""
    extras = compat.attention_extras(module, kwargs)
    return not eager and extras["softcap"] is None and extras["sinks"] is None


def install() -> None:
    """Route continuous-batching SDPA and eager calls through per-sequence attention (idempotent)."""
    global _installed
    if _installed:
        return
    from transformers import AttentionInterface

    def wrap(original, eager: bool):
        def paged(module, query, key, value, attention_mask, dropout=0.0, scaling=None, cache=None, **kw):
            how = compat.packed_call(cache, kw)
            if how is None or (how == "updated" and _transformers_exact(module, kw, eager)):
                return original(
                    module,
                    query,
                    key,
                    value,
                    attention_mask,
                    dropout=dropout,
                    scaling=scaling,
                    cache=cache,
                    **kw,
                )
            return _paged(module, query, key, value, cache if how == "update" else None, scaling, kw, eager)

        return paged

    registered = AttentionInterface()
    for name, original in compat.attention_originals().items():
        # Wrap what is registered now (runner.engine.cascade may have wrapped "sdpa" already: calls
        # outside its context pass through it), so the order the two are installed in does not matter.
        try:
            current = registered[name]
        except KeyError:
            current = original
        AttentionInterface.register(name, wrap(current, eager=name != "sdpa"))
    _installed = True
