"""Which batching strategies are exact for a loaded model, decided from the model's own properties.

"Exact" means every row gets the tokens an unbatched greedy `model.generate` of that row alone gives.
Each strategy changes something about how a row is computed, and is allowed only for models where
that change cannot alter the result:

- `padded` left-pads rows, passes each row's `position_ids`, and keeps every layer's keys and values
  in one full-length cache (sliding windows are applied by transformers' masks, which count in cache
  columns: exact because a row's real tokens are contiguous in its cache). So it needs a model whose
  forward takes `position_ids`, whose every layer is a plain key/value attention layer
  (`full_attention` or `sliding_attention`), and whose rotary embedding does not depend on the longest
  position in the batch (`dynamic` / `longrope` scaling recompute frequencies from `max(position_ids)`,
  transformers' modeling_rope_utils.dynamic_rope_update).
- `continuous` packs rows into one stream over transformers' paged cache; the same conditions, plus
  the model must route attention through transformers' attention interface
  (`_supports_attention_backend`): continuous batching replaces the attention function and hands it the
  packed layout, and a model computing attention itself fails on it (StableLM, Falcon) or, with its
  own bias (ALiBi in Bloom / MPT), would attend across rows.
- `generate` runs transformers' own `model.generate`, batching only prompts of equal length (no padding
  at all), so every row sees exactly what it sees alone: exact for any model `generate` runs, state-space
  and hybrid models included.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner import compat
from runner.engine.forward import forward_takes

# Cache layer types (transformers cache_utils.DYNAMIC_LAYER_TYPE_MAPPING) that hold plain keys/values.
KV_LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})
# Rotary scalings whose frequencies depend on the longest position in the batch (see module docstring).
BATCH_DEPENDENT_ROPE = frozenset({"dynamic", "longrope"})
STRATEGY_ORDER = ("continuous", "padded", "generate")


@dataclass(frozen=True)
class Architecture:
    """The properties of a loaded model that decide which strategies are exact for it."""

    name: str
    layer_types: tuple[str, ...]
    stateful: bool  # the cache holds a recurrent state (SSM / hybrid), not only keys and values
    attention_backend: bool  # attention goes through transformers' AttentionInterface
    takes_position_ids: bool
    rope_types: frozenset[str]

    @classmethod
    def of(cls, model) -> Architecture:
        """Read the properties off a loaded transformers model."""
        # An adapter wrapper (peft's PeftModel) forwards everything to the model it wraps: judge that one.
        model = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = model.config.get_text_config(decoder=True)
        return cls(
            name=type(model).__name__,
            layer_types=tuple(layer_types(config)),
            stateful=_stateful(model, config),
            attention_backend=bool(compat.model_flag(model, "_supports_attention_backend")),
            takes_position_ids=forward_takes(model, "position_ids"),
            rope_types=frozenset(rope_types(config)),
        )


# Cache layer types that hold a recurrent or convolution state rather than only keys and values, as
# transformers' DynamicCache maps them (cache_utils.DYNAMIC_LAYER_TYPE_MAPPING; 5.23-5.25 checked).
RECURRENT_LAYER_TYPES = frozenset({"linear_attention", "conv", "hybrid", "hybrid_sliding", "mamba"})


def _stateful(model, config) -> bool:
    """Whether the cache holds a recurrent state. Three signs, any one suffices: the class flag
    `_is_stateful` (transformers <= 5.24), a cache generate would not make a DynamicCache (<= 5.24's
    SSMs), or a recurrent layer type (5.25 gives Mamba a DynamicCache of linear-attention layers and
    dropped the flag)."""
    if compat.model_flag(model, "_is_stateful") or not _default_cache(model):
        return True
    return bool(RECURRENT_LAYER_TYPES.intersection(layer_types(config)))


def _default_cache(model) -> bool:
    """Whether generate would give this model a DynamicCache (generation/utils.py)."""
    supports = compat.model_flag(model, "_supports_default_dynamic_cache", None)
    return bool(supports()) if callable(supports) else True


def layer_types(config) -> list[str]:
    """Each layer's cache type, as transformers' DynamicCache infers it (runner.compat)."""
    return compat.layer_types(config)


def rope_types(config) -> set[str]:
    """Every rotary type the config names (rope_parameters / rope_scaling, possibly one per layer type)."""
    found: set[str] = set()
    for params in (getattr(config, "rope_parameters", None), getattr(config, "rope_scaling", None)):
        stack = [params]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                kind = item.get("rope_type") or item.get("type")
                found |= {kind} if isinstance(kind, str) else set()
                stack.extend(v for v in item.values() if isinstance(v, dict))
    return found


def padded_refusal(arch: Architecture) -> str | None:
    """Why the padded strategy cannot be exact for this model (None: it is)."""
    if arch.stateful:
        return "its cache holds a recurrent state, which left padding would run through"
    other = sorted(set(arch.layer_types) - KV_LAYER_TYPES)
    if other:
        return f"it has {', '.join(other)} layers (not plain key/value attention)"
    if not arch.takes_position_ids:
        return "its forward takes no position_ids, so left padding would shift its positions"
    dynamic = sorted(arch.rope_types & BATCH_DEPENDENT_ROPE)
    if dynamic:
        return f"its {', '.join(dynamic)} rotary scaling depends on the longest row in a batch"
    return None


def continuous_refusal(arch: Architecture) -> str | None:
    """Why the continuous strategy cannot be exact for this model (None: it is)."""
    refusal = padded_refusal(arch)
    if refusal is not None:
        return refusal
    if not arch.attention_backend:
        return "it computes attention itself instead of through transformers' attention interface"
    return None


REFUSALS = {"padded": padded_refusal, "continuous": continuous_refusal, "generate": lambda arch: None}


def exact_strategies(arch: Architecture) -> list[str]:
    """The strategies exact for this model, fastest first."""
    return [name for name in STRATEGY_ORDER if REFUSALS[name](arch) is None]
