"""Turn a ModelConfig + PlacementConfig into a loaded model and tokenizer.

All the decisions about dtype, attention kernel, bitsandbytes and device maps live here, as pure
functions of the config and the detected devices, so they are testable without loading anything.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

import torch

from runner import compat
from runner.config import ModelConfig, PlacementConfig, QuantizationConfig
from runner.engine.demo_model import is_demo, resolve_demo
from runner.errors import ConfigError, first_line

log = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class Devices:
    """What this process can see."""

    cuda: bool
    gpu_count: int
    bf16: bool

    @classmethod
    def detect(cls) -> Devices:
        cuda = torch.cuda.is_available()
        return cls(
            cuda=cuda,
            gpu_count=torch.cuda.device_count() if cuda else 0,
            bf16=cuda and torch.cuda.is_bf16_supported(),
        )


def resolve_dtype(dtype: str, devices: Devices) -> torch.dtype:
    """auto -> bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU."""
    if dtype != "auto":
        return _DTYPES[dtype]
    if devices.cuda:
        return torch.bfloat16 if devices.bf16 else torch.float16
    return torch.float32


def dtype_reason(dtype: str, devices: Devices) -> str:
    """Why `resolve_dtype` chose what it chose."""
    if dtype != "auto":
        return "set in config"
    if devices.cuda:
        return "auto: the GPU supports bfloat16" if devices.bf16 else "auto: the GPU lacks bfloat16"
    return "auto: no GPU, float32 on CPU"


def flash_attn_missing(devices: Devices, dtype: torch.dtype) -> list[str]:
    """Reasons FlashAttention-2 cannot run here (empty when it can)."""
    missing = []
    if importlib.util.find_spec("flash_attn") is None:
        missing.append("the flash_attn package is not installed (pip install 'hf-batch-runner[flash]')")
    if not devices.cuda:
        missing.append("no CUDA GPU is visible")
    if dtype not in (torch.float16, torch.bfloat16):
        missing.append(f"dtype is {str(dtype).removeprefix('torch.')}, FA2 needs float16 or bfloat16")
    return missing


@dataclass(frozen=True)
class AttentionSupport:
    """The attention implementations a model class declares it can run (modeling_utils.PreTrainedModel
    `_supports_flash_attn`, `_supports_sdpa`; eager always runs)."""

    model: str
    flash: bool = True
    sdpa: bool = True

    @classmethod
    def of(cls, model_class) -> AttentionSupport:
        # A class listing `_compatible_flash_implementations` without flash_attention_2 (GPT-OSS: its
        # attention sinks) would be switched by transformers to a hub kernel, or lose its sinks in the
        # flash_attn package (modeling_utils._check_and_adjust_attn_implementation,
        # modeling_flash_attention_utils._process_flash_attention_kwargs): FA2 does not count for it.
        compatible = compat.model_flag(model_class, "_compatible_flash_implementations", None)
        return cls(
            model=model_class.__name__,
            flash=bool(compat.model_flag(model_class, "_supports_flash_attn"))
            and (compatible is None or "flash_attention_2" in compatible),
            sdpa=bool(compat.model_flag(model_class, "_supports_sdpa")),
        )


def resolve_attention(
    choice: str, devices: Devices, dtype: torch.dtype, support: AttentionSupport | None = None
) -> tuple[str, str]:
    """Pick the attention implementation; returns (implementation, reason).

    auto: FlashAttention-2 when it can run here and the model supports it, else SDPA when the model
    supports it, else eager. `support` None: the model is not known yet, every kernel counts as supported.
    """
    missing = flash_attn_missing(devices, dtype)
    support = support or AttentionSupport(model="the model")
    if choice == "flash_attention_2" and missing:
        raise ConfigError("model.attention: flash_attention_2 cannot run here: " + "; ".join(missing))
    if choice == "flash_attention_2" and not support.flash:
        raise ConfigError(
            f"model.attention: {support.model} does not support flash_attention_2; use sdpa or eager"
        )
    if choice == "sdpa" and not support.sdpa:
        raise ConfigError(f"model.attention: {support.model} does not support sdpa; use eager")
    if choice != "auto":
        return choice, "set in config"
    if support.flash and not missing:
        return "flash_attention_2", "flash_attn installed, CUDA GPU and half precision present"
    why = "; ".join(missing) if support.flash else f"{support.model} does not support it"
    if support.sdpa:
        return "sdpa", f"FlashAttention-2 not used: {why}"
    return "eager", f"FlashAttention-2 not used: {why}; {support.model} does not support sdpa"


def bnb_config(quant: QuantizationConfig, dtype: torch.dtype):
    """A transformers BitsAndBytesConfig for the quantization section, or None."""
    if quant.mode == "none":
        return None
    from transformers import BitsAndBytesConfig

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("model.quantization.mode: bitsandbytes is not installed")
    if quant.mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=quant.llm_int8_threshold)
    compute = dtype if quant.compute_dtype == "auto" else _DTYPES[quant.compute_dtype]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def device_map_kwargs(placement: PlacementConfig, devices: Devices, quantized: bool) -> dict[str, Any]:
    """device_map / max_memory for from_pretrained, given the GPUs this replica can see."""
    # "auto" is resolved by the job's plan before replicas start; an engine built directly leaves the
    # split to transformers' own balancing.
    max_memory = placement.max_memory if isinstance(placement.max_memory, dict) else None
    if not devices.cuda:
        if max_memory and any(k.isdigit() for k in max_memory):
            log.info("no GPU visible: ignoring the GPU entries of placement.max_memory")
            max_memory = {k: v for k, v in max_memory.items() if not k.isdigit()} or None
        if placement.device_map == "auto" or max_memory:
            return (
                {"device_map": "auto", "max_memory": dict(max_memory)}
                if max_memory
                else {"device_map": "auto"}
            )
        return {"device_map": "cpu"} if quantized else {}
    if placement.device_map == "auto" or max_memory or devices.gpu_count > 1:
        kwargs: dict[str, Any] = {"device_map": "auto"}
        if max_memory:
            kwargs["max_memory"] = {int(k) if k.isdigit() else k: v for k, v in max_memory.items()}
        return kwargs
    return {"device_map": {"": 0}}


def from_pretrained_kwargs(
    model: ModelConfig, placement: PlacementConfig, devices: Devices, support: AttentionSupport | None = None
) -> dict:
    """Everything passed to AutoModelForCausalLM.from_pretrained besides the path."""
    dtype = resolve_dtype(model.dtype, devices)
    attn, reason = resolve_attention(model.attention, devices, dtype, support)
    log.info("attention: %s (%s)", attn, reason)
    quant = bnb_config(model.quantization, dtype)
    kwargs = {
        "dtype": dtype,
        "attn_implementation": attn,
        "revision": model.revision,
        "trust_remote_code": model.trust_remote_code,
        **device_map_kwargs(placement, devices, quantized=quant is not None),
    }
    if quant is not None:
        kwargs["quantization_config"] = quant
    return kwargs


def describe_loading(
    model: ModelConfig, devices: Devices, support: AttentionSupport | None = None
) -> dict[str, str]:
    """The dtype, attention kernel and quantization a model loads with, each with its reason (the
    same decisions as `from_pretrained_kwargs`, as text for logs and the job summary)."""
    dtype = resolve_dtype(model.dtype, devices)
    attention, attention_reason = resolve_attention(model.attention, devices, dtype, support)
    quant = model.quantization
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "dtype_reason": dtype_reason(model.dtype, devices),
        "attention": attention,
        "attention_reason": attention_reason,
        "quantization": quant.mode if quant.mode == "none" else f"bitsandbytes {quant.mode}",
        "quantization_reason": "set in config" if quant.mode != "none" else "model.quantization.mode is none",
    }


def check_settings(model: ModelConfig, placement: PlacementConfig, devices: Devices | None = None) -> None:
    """Raise the ConfigError that loading would raise for what the config demands (FlashAttention-2,
    bitsandbytes) on this machine's devices, without loading anything."""
    from_pretrained_kwargs(model, placement, devices or Devices.detect())


def resolve_path(path: str) -> str:
    """Demo ids become local directories; everything else is passed to transformers as is."""
    return resolve_demo(path) if is_demo(path) else path


def load_tokenizer(model: ModelConfig):
    """The tokenizer, left-padded (decoder-only batching), with a pad token (EOS, else its first token:
    pad columns are masked out, so which id fills them never changes a result)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        resolve_path(model.tokenizer or model.path),
        revision=model.revision,
        trust_remote_code=model.trust_remote_code,
    )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(0)
    return tokenizer


def model_class(model: ModelConfig):
    """The class AutoModelForCausalLM would instantiate for this model (its config only is read)."""
    from transformers import AutoConfig

    path = resolve_path(model.path)
    try:
        config = AutoConfig.from_pretrained(
            path, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.path: cannot load {model.path!r}: {first_line(err)}") from None
    remote = (getattr(config, "auto_map", None) or {}).get("AutoModelForCausalLM")
    if remote and model.trust_remote_code:
        return compat.remote_model_class(remote, path, model.revision)
    try:
        return compat.causal_lm_class(config)
    except KeyError:
        raise ConfigError(
            f"model.path: {model.path!r} is a {type(config).__name__}, not a causal LM transformers can load"
        ) from None


def load_model(model: ModelConfig, placement: PlacementConfig, devices: Devices | None = None):
    """Load the model once, as configured, in eval mode, with an attention kernel its class supports."""
    from transformers import AutoModelForCausalLM

    devices = devices or Devices.detect()
    kwargs = from_pretrained_kwargs(model, placement, devices, AttentionSupport.of(model_class(model)))
    try:
        loaded = AutoModelForCausalLM.from_pretrained(resolve_path(model.path), **kwargs)
    except OSError as err:
        raise ConfigError(f"model.path: cannot load {model.path!r}: {first_line(err)}") from None
    return loaded.eval()
