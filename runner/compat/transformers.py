"""transformers (and the peft / accelerate copies it ships): model classes and their declared flags,
caches, remote code, adapters, and sizing a model without its weights (runner.planning)."""

from __future__ import annotations

from typing import Any

from runner.compat.versions import at_least, version

# --- transformers: model classes and their declared capabilities -------------------------------------


def attn_implementation(model_or_config) -> str:
    """The attention implementation a loaded model runs (`config._attn_implementation`).

    Why private: transformers exposes a setter (`set_attn_implementation`) but no getter; every model
    file reads this attribute. Checked: transformers 5.23.0, 5.24.0."""
    config = getattr(model_or_config, "config", model_or_config)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def model_flag(model_or_class, name: str, default: Any = False) -> Any:
    """A capability a model class declares as a private class attribute: `_supports_flash_attn`,
    `_supports_sdpa`, `_supports_attention_backend`, `_is_stateful`, `_compatible_flash_implementations`,
    `_supports_default_dynamic_cache` (a method).

    Why private: these are how transformers itself decides what a class can run
    (modeling_utils._check_and_adjust_attn_implementation, generation/utils.py); there is no public
    query. Checked: transformers 5.23.0, 5.24.0."""
    if not name.startswith("_"):
        raise ValueError(f"model_flag reads private class flags only, not {name!r}")
    return getattr(model_or_class, name, default)


def causal_lm_class(config):
    """The class AutoModelForCausalLM would instantiate for `config`, without loading weights.

    Why private: `auto_factory._get_model_class` + `_model_mapping` is the lookup from_pretrained does;
    the public `AutoModelForCausalLM.from_config` builds the model (allocating its weights).
    Checked: transformers 5.23.0, 5.24.0. Raises KeyError for a config that is not a causal LM."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.auto_factory import _get_model_class

    return _get_model_class(config, AutoModelForCausalLM._model_mapping)


def layer_types(config) -> list[str]:
    """Each layer's cache type, as transformers' DynamicCache infers it for `config` (a Mistral-style
    `sliding_window` included). Why internal: `cache_utils.get_layer_types_and_kwargs` is how the
    cache decides; no public query. A config without per-layer information (older remote code):
    `config.layer_types`, else full attention. Checked: transformers 5.23.0, 5.24.0."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    try:
        return list(get_layer_types_and_kwargs(config)[0])
    except (AttributeError, TypeError):
        return list(getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers)


def remote_model_class(reference: str, path: str, revision: str | None):
    """The class a model's remote code (`auto_map` entry `reference`) defines, without loading weights.

    Why internal: `dynamic_module_utils.get_class_from_dynamic_module` is what from_pretrained calls
    with trust_remote_code; the public path builds the model. Checked: transformers 5.23.0, 5.24.0."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    return get_class_from_dynamic_module(reference, path, revision=revision)


# --- transformers: caches -------------------------------------------------------------------------------


def dynamic_layer_base():
    """transformers' `DynamicLayer`, to subclass with a cache layer of our own (runner.engine.kv_cache).

    Why undocumented: the class is exported, but what a layer must keep for the model and the masks to
    read it is not: `keys` / `values` tensors [rows, kv_heads, columns, head_dim], `is_initialized`,
    `dtype` / `device`, `update(key_states, value_states, *args, **kwargs) -> (keys, values)` and
    `get_seq_length()`. Checked: transformers 5.23.0, 5.24.0."""
    from transformers import DynamicLayer

    return DynamicLayer


def cache_with_layers(cache, make_layer) -> Any:
    """`cache` (a `DynamicCache`, just built for a model's config) with every layer replaced by
    `make_layer()` instead of the kind the config asks for (a sliding layer's own cache keeps only its
    window: runner.engine.kv_cache); returns it.

    Why undocumented: the layers a cache holds are set by its constructor from the config; replacing
    `cache.layers` is the only way to choose them. Checked: transformers 5.23.0, 5.24.0."""
    cache.layers = [make_layer() for _ in cache.layers]
    return cache


# --- transformers + peft: adapters ------------------------------------------------------------------


def has_loaded_adapters(model) -> bool:
    """Whether adapters were loaded into a transformers model (`_hf_peft_config_loaded`).

    Why private: transformers' PEFT integration keeps no public flag. Checked: transformers 5.23.0, 5.24.0."""
    return bool(getattr(model, "_hf_peft_config_loaded", False))


def adapter_switching_problem() -> str | None:
    """Why transformers' adapter switching (load_adapter / set_adapter) cannot run with the installed
    peft, as one line, or None when it can.

    Why undocumented: transformers states its peft floor only as `integrations.peft.MIN_PEFT_VERSION`
    and raises on the first call; we want to refuse a multi-adapter job at start, naming both
    versions. transformers 5.24.0 needs peft >= 0.22.0, unreleased on 2026-12-02 (peft 0.21.2 is the
    newest). Checked: transformers 5.23.0 (floor 0.20.0), 5.24.0 (0.22.0)."""
    try:
        from transformers.integrations.peft import MIN_PEFT_VERSION
    except ImportError:
        return None
    if version("peft") == "not installed":
        return "peft is not installed"
    if at_least("peft", MIN_PEFT_VERSION):
        return None
    return (
        f"transformers {version('transformers')} switches adapters only with peft >= {MIN_PEFT_VERSION}, "
        f"installed peft {version('peft')} (install the project's lock: pip install -c constraints.txt ...)"
    )


# --- transformers + accelerate: sizing and placing a model without weights (runner.planning) -------------


def quantizer_for(quantization_config):
    """transformers' quantizer for a `BitsAndBytesConfig`, as from_pretrained builds it
    (`quantizers.auto.AutoHfQuantizer.from_config`). Why undocumented: from_pretrained builds and uses it
    internally; the planner needs the same object to leave out the modules bitsandbytes skips and to
    size quantized weights. Checked: transformers 5.23.0, 5.24.0."""
    from transformers.quantizers.auto import AutoHfQuantizer

    return AutoHfQuantizer.from_config(quantization_config, pre_quantized=False)


def quantize_skeleton(quantizer, model, dtype) -> None:
    """Swap a meta-device model's linear layers for the quantizer's, as loading does
    (`HfQuantizer.preprocess_model`). Checked: transformers 5.23.0, 5.24.0."""
    quantizer.preprocess_model(
        model=model, dtype=dtype, device_map=None, checkpoint_files=None, use_kernels=False
    )


def module_sizes(model, quantizer) -> dict[str, int]:
    """Bytes of every module, parameter and buffer of a (meta) model for the quantizer's element sizes:
    accelerate's `compute_module_sizes` in the copy transformers 5 loads with
    (`integrations.accelerate`, which takes the quantizer). Checked: transformers 5.23.0, 5.24.0."""
    from transformers.integrations.accelerate import compute_module_sizes

    return {k: int(v) for k, v in compute_module_sizes(model, quantizer, only_modules=False)[0].items()}


def no_split_modules(model) -> list[str]:
    """The layer classes a device map must not split (`_no_split_modules`). Checked: transformers 5.23.0, 5.24.0."""
    return list(getattr(model, "_no_split_modules", None) or [])


def auto_device_map(model, max_memory: dict, quantizer) -> dict:
    """The device map `device_map="auto"` computes for these caps: transformers' copies of accelerate's
    `get_balanced_memory` + `infer_auto_device_map`, with the quantizer's `adjust_max_memory` between
    them, as from_pretrained does. Checked: transformers 5.23.0, 5.24.0 (accelerate 1.16.0)."""
    from transformers.integrations.accelerate import get_balanced_memory, infer_auto_device_map

    no_split = no_split_modules(model)
    caps = get_balanced_memory(model, dict(max_memory), no_split, hf_quantizer=quantizer)
    if quantizer is not None:
        caps = quantizer.adjust_max_memory(caps)
    return infer_auto_device_map(
        model, max_memory=caps, no_split_module_classes=no_split, hf_quantizer=quantizer
    )
