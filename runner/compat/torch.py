"""torch: the varlen FlashAttention entry point, whose keyword arguments still change between releases.

`torch.nn.attention.varlen.varlen_attn` is a prototype API (new in torch 2.10): torch 2.13 takes
`window_size` and `enable_gqa`, torch 2.11 (seen on a CUDA image) takes neither, and a call with them
fails inside the continuous strategy's generation thread. So the call is spelled from the installed
function's own signature: without `enable_gqa` the key/value heads are repeated to the query's
(what transformers' `repeat_kv` does), without `window_size` a windowed layer is not run here.
Checked: torch 2.13.0 (CPU build, signature), torch 2.11.0+cu130 (H200, the failure above).
"""

from __future__ import annotations

import functools
import inspect


@functools.cache
def _varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, frozenset()
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def varlen_available() -> bool:
    """Whether this torch has the varlen attention function."""
    return _varlen()[0] is not None


def varlen_attention(query, key, value, cu_q, cu_k, max_q: int, max_k: int, scale, window: int | None):
    """Causal (bottom-right) attention of packed sequences, [tokens, heads, dim] each, through torch's
    varlen kernel; None when this torch's kernel cannot compute it (no such function, or a window it
    takes no argument for): the caller computes it another way."""
    varlen_attn, takes = _varlen()
    if varlen_attn is None or (window and "window_size" not in takes):
        return None
    kwargs = {"scale": scale}
    if window:
        kwargs["window_size"] = (window - 1, 0)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        if "enable_gqa" in takes:
            kwargs["enable_gqa"] = True
        else:
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return varlen_attn(query, key, value, cu_q, cu_k, max_q, max_k, **kwargs)
