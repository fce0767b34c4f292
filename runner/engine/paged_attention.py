"""Per-sequence attention for transformers' continuous batching when the model does not run FlashAttention.

With FlashAttention-2 the continuous batching manager calls a varlen kernel: each packed sequence
attends only to its own keys. Its SDPA fallback instead builds one dense mask over the whole packed
batch and computes every query against every cached key of every request, so a decode step over B
rows costs B times the attention it needs. That is what it lacks on CPU and on GPUs without flash_attn.

`install()` wraps transformers' "sdpa" attention function: calls that carry a `PagedAttentionCache`
(continuous batching) are computed sequence by sequence, with PyTorch's own varlen FlashAttention
kernel on CUDA in half precision and one SDPA call per sequence otherwise; every other call goes to
the original function unchanged, so padded batches and `model.generate` are untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_installed = False


def _varlen_kernel_usable(query: torch.Tensor) -> bool:
    if not (query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)):
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def _torch_varlen(query, key, value, kwargs: dict, scaling) -> torch.Tensor:
    """[1, heads, q, d] -> [1, q, heads, d] with PyTorch's varlen FlashAttention (bottom-right causal)."""
    from torch.nn.attention.varlen import varlen_attn

    out = varlen_attn(
        query[0].transpose(0, 1),
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
        kwargs["cu_seq_lens_q"].to(torch.int32),
        kwargs["cu_seq_lens_k"].to(torch.int32),
        int(kwargs["max_length_q"]),
        int(kwargs["max_length_k"]),
        scale=scaling,
        window_size=(-1, 0),
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.unsqueeze(0)


def _causal_bottom_right(q_len: int, k_len: int, device) -> torch.Tensor:
    """Boolean mask: query i (the last q_len positions) sees keys up to its own position."""
    rows = torch.arange(q_len, device=device).unsqueeze(1) + (k_len - q_len)
    return torch.arange(k_len, device=device).unsqueeze(0) <= rows


def _sequence_loop(query, key, value, kwargs: dict, scaling) -> torch.Tensor:
    """[1, heads, q, d] -> [1, q, heads, d], one SDPA call per packed sequence."""
    cu_q = kwargs["cu_seq_lens_q"].tolist()
    cu_k = kwargs["cu_seq_lens_k"].tolist()
    out = torch.zeros_like(query)  # positions past the last sequence (graph padding) stay defined
    gqa = key.shape[1] != query.shape[1]
    for q0, q1, k0, k1 in zip(cu_q, cu_q[1:], cu_k, cu_k[1:], strict=False):
        q_len, k_len = q1 - q0, k1 - k0
        if q_len == 0:
            continue
        mask = _causal_bottom_right(q_len, k_len, query.device) if 1 < q_len < k_len else None
        out[:, :, q0:q1] = F.scaled_dot_product_attention(
            query[:, :, q0:q1],
            key[:, :, k0:k1],
            value[:, :, k0:k1],
            attn_mask=mask,
            is_causal=q_len > 1 and q_len == k_len,
            scale=scaling,
            enable_gqa=gqa,
        )
    return out.transpose(1, 2)


def install() -> None:
    """Route continuous-batching SDPA calls through per-sequence attention (idempotent)."""
    global _installed
    if _installed:
        return
    from transformers import AttentionInterface
    from transformers.generation.continuous_batching.cache import PagedAttentionCache
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def paged_sdpa(
        module, query, key, value, attention_mask, dropout=0.0, scaling=None, cache=None, **kwargs
    ):
        if not isinstance(cache, PagedAttentionCache):
            return sdpa_attention_forward(
                module,
                query,
                key,
                value,
                attention_mask,
                dropout=dropout,
                scaling=scaling,
                cache=cache,
                **kwargs,
            )
        key, value = cache.update(
            key_states=key, value_states=value, layer_idx=module.layer_idx, kwargs=kwargs
        )
        attend = _torch_varlen if _varlen_kernel_usable(query) else _sequence_loop
        return attend(query, key, value, kwargs, scaling).contiguous(), None

    AttentionInterface.register("sdpa", paged_sdpa)
    _installed = True
