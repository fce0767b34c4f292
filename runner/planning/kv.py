"""What a row costs in the cache: keys and values per token position, and a recurrent state per row.

Read from the model's config, layer by layer, with the layer types transformers' `DynamicCache`
gives the model (runner.engine.architecture.layer_types):

- a full-attention layer keeps `2 x kv_heads x head_dim` values per position;
- a sliding-window layer the same, but at most `sliding_window` positions per row where the
  strategy's cache drops older ones: transformers' `DynamicSlidingWindowLayer` (the generate
  strategy; it keeps window - 1) and its paged cache (continuous). The padded strategy keeps every
  column of every layer (runner.engine.kv_cache), so there a sliding layer costs what a full one does;
- a state-space layer (Mamba, `linear_attention`) keeps a fixed state per row whatever its length:
  a convolution window (`conv_kernel` columns of the inner width) and the SSM state
  (`state_size` per inner channel), in the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runner.engine.architecture import layer_types

CAPPING_STRATEGIES = frozenset({"generate", "continuous"})  # caches that drop positions past a window


@dataclass(frozen=True)
class LayerCache:
    """One layer's cache cost."""

    per_token: int  # bytes one more position adds (0 for a state-space layer)
    window: int | None = None  # a sliding layer's window
    per_row: int = 0  # fixed bytes per row (a recurrent state)

    def row_bytes(self, tokens: int, capped: bool) -> int:
        kept = min(tokens, self.window) if capped and self.window else tokens
        return self.per_token * kept + self.per_row


@dataclass(frozen=True)
class CacheCost:
    """Every layer's cache cost, and whether the strategy's cache caps sliding layers at their window."""

    layers: tuple[LayerCache, ...]
    capped: bool

    @property
    def per_token(self) -> int:
        """Bytes of one position in every layer that keeps positions (before any window cap)."""
        return sum(layer.per_token for layer in self.layers)

    @property
    def per_row(self) -> int:
        """Fixed bytes of one row (the recurrent states)."""
        return sum(layer.per_row for layer in self.layers)

    def row_bytes(self, tokens: int, layers: list[int] | None = None) -> int:
        """Cache bytes of one row of `tokens` positions (over `layers`, default all)."""
        chosen = self.layers if layers is None else [self.layers[i] for i in layers]
        return sum(layer.row_bytes(tokens, self.capped) for layer in chosen)


def cache_cost(config, dtype: torch.dtype, strategy: str) -> CacheCost:
    """The cache cost of a model with this config, its cache in `dtype`, run by `strategy`."""
    text = config.get_text_config(decoder=True)
    width = torch.finfo(dtype).bits // 8
    kinds = layer_types(text)
    attends = any(kind != "linear_attention" for kind in kinds)  # a pure state-space model names no heads
    kv = 2 * kv_heads(text) * head_dim(text) * width if attends else 0
    window = getattr(text, "sliding_window", None)
    layers = []
    for kind in kinds:
        if kind == "linear_attention":
            layers.append(LayerCache(0, per_row=recurrent_state(text, width)))
        elif kind in ("sliding_attention", "chunked_attention") and window:
            layers.append(LayerCache(kv, window=int(window)))
        else:  # full attention, or a type not known here: every position kept (the upper side)
            layers.append(LayerCache(kv))
    return CacheCost(tuple(layers), capped=strategy in CAPPING_STRATEGIES)


def kv_heads(text) -> int:
    """Key/value heads: grouped-query configs name them; multi-query ones (Falcon, GPTBigCode) have one."""
    heads = getattr(text, "num_key_value_heads", None) or getattr(text, "num_kv_heads", None)
    if heads:
        return int(heads)
    if getattr(text, "multi_query", False):
        return 1
    return int(text.num_attention_heads)


def head_dim(text) -> int:
    return int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)


def recurrent_state(text, width: int) -> int:
    """Bytes of one Mamba-style layer's state for one row: convolution window + SSM state.

    Mamba (and Jamba's `mamba_*` names): conv [inner, conv_kernel], ssm [inner, state_size].
    Mamba2: conv over inner + 2 x n_groups x state_size channels, ssm [heads, head_dim, state_size]."""
    expand = getattr(text, "mamba_expand", None) or getattr(text, "expand", None) or 2
    inner = int(expand * text.hidden_size)
    conv = getattr(text, "mamba_d_conv", None) or getattr(text, "conv_kernel", None) or 4
    state = getattr(text, "mamba_d_state", None) or getattr(text, "state_size", None) or 16
    groups = getattr(text, "n_groups", None)
    if groups:  # Mamba2
        return (conv * (inner + 2 * groups * state) + inner * state) * width
    return (conv + state) * inner * width
