"""A model's weights, sized and placed without loading them.

The model is built from its `config.json` on the meta device (accelerate's `init_empty_weights`), its
linear layers swapped for bitsandbytes ones exactly as `from_pretrained` does (transformers'
`HfQuantizer.preprocess_model`, which leaves out the modules `BitsAndBytesConfig` skips: the output
head, `_keep_in_fp32_modules`, and any weight that is not an `nn.Linear`, such as the fused experts of
a transformers 5 MoE block). It is then sized with `compute_module_sizes` and placed with
`get_balanced_memory` + `infer_auto_device_map`: accelerate's functions in the copies transformers 5
loads with (transformers.integrations.accelerate), which take the quantizer's element sizes. So the
plan places the weights the way `device_map="auto"` will (transformers' `_get_device_map`, whose
steps `place` repeats, including the quantizer's `adjust_max_memory`).

`compute_module_sizes` counts what `get_memory_footprint()` counts: parameters and buffers. The
bitsandbytes quantization state (4-bit absmax per 64-value block, nested when double-quantized;
8-bit's per-row scales) lives beside the parameters; `quant_state_bytes` adds it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from runner import compat
from runner.config import ModelConfig
from runner.engine.loading import bnb_config, resolve_path
from runner.errors import ConfigError, first_line

BLOCK_4BIT = 64  # bitsandbytes' default 4-bit block size (Params4bit.blocksize)
NESTED_BLOCK = 256  # double quantization: the absmax values are quantized in blocks of 256


def read_config(model: ModelConfig):
    """The model's transformers config: a local directory, the hub cache, or the hub's config.json."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            resolve_path(model.path), revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model.path: cannot read the config of {model.path!r}: {first_line(err)}"
        ) from None


@dataclass
class Skeleton:
    """The model on the meta device, with the quantizer loading would use (None: not quantized)."""

    config: Any
    model: Any
    quantizer: Any
    dtype: torch.dtype

    @classmethod
    def build(cls, model: ModelConfig, dtype: torch.dtype, config=None) -> Skeleton:
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        config = config if config is not None else read_config(model)
        quantizer = _quantizer(model, dtype)
        try:
            with init_empty_weights(include_buffers=False):
                skeleton = AutoModelForCausalLM.from_config(
                    config, dtype=dtype, trust_remote_code=model.trust_remote_code
                )
        except ValueError as err:
            raise ConfigError(f"model.path: {model.path!r} is not a causal LM: {first_line(err)}") from None
        if quantizer is not None:
            compat.quantize_skeleton(quantizer, skeleton, dtype)
        return cls(config, skeleton, quantizer, dtype)

    @cached_property
    def sizes(self) -> dict[str, int]:
        """Bytes of every module, parameter and buffer (by dotted name; "" is the whole model)."""
        return compat.module_sizes(self.model, self.quantizer)

    @property
    def parameter_bytes(self) -> int:
        """What the loaded model's `get_memory_footprint()` reports."""
        return self.sizes[""]

    @cached_property
    def quant_state_bytes(self) -> int:
        """bitsandbytes' quantization state beside the weights (0 when not quantized)."""
        if self.quantizer is None:
            return 0
        import bitsandbytes as bnb

        nested = bool(getattr(self.quantizer.quantization_config, "bnb_4bit_use_double_quant", False))
        total = 0
        for module in self.model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                total += absmax_bytes(module.weight.numel(), nested)
            elif isinstance(module, bnb.nn.Linear8bitLt):
                total += 4 * module.out_features  # SCB: one float32 scale per output row
        return total

    @property
    def weight_bytes(self) -> int:
        return self.parameter_bytes + self.quant_state_bytes

    def place(self, max_memory: dict[int | str, int]) -> dict[str, int | str]:
        """accelerate's device map for these caps, as `device_map="auto"` computes it."""
        with _quiet_accelerate():  # it warns that the planned GPUs are not on this machine
            return compat.auto_device_map(self.model, max_memory, self.quantizer)

    def bytes_by_device(self, device_map: dict[str, int | str]) -> dict[int | str, int]:
        """Weight bytes on each device of a device map (the quantization state shared out in proportion)."""
        scale = self.weight_bytes / max(self.parameter_bytes, 1)
        out: dict[int | str, int] = {}
        for name, device in device_map.items():
            out[device] = out.get(device, 0) + int(self.sizes.get(name, 0) * scale)
        return out

    def layer_devices(self, device_map: dict[str, int | str]) -> list[int | str]:
        """The device of each decoder layer, in layer order."""
        layers = [
            n
            for n, m in self.model.named_modules()
            if type(m).__name__ in compat.no_split_modules(self.model)
        ]
        return [_device_of(name, device_map) for name in layers]


def absmax_bytes(values: int, nested: bool) -> int:
    """Bytes of a 4-bit weight's block scales: float32 per block, or uint8 per block plus a float32
    per 256 blocks and two 256-entry code books when double-quantized (bitsandbytes QuantState)."""
    blocks = math.ceil(values / BLOCK_4BIT)
    if not nested:
        return 4 * blocks
    return blocks + 4 * math.ceil(blocks / NESTED_BLOCK) + 2 * 256 * 4


def _device_of(name: str, device_map: dict[str, int | str]) -> int | str:
    while True:
        if name in device_map:
            return device_map[name]
        if not name:
            return "cpu"
        name = name.rpartition(".")[0]


def _quantizer(model: ModelConfig, dtype: torch.dtype):
    quant = bnb_config(model.quantization, dtype)
    if quant is None:
        return None
    return compat.quantizer_for(quant)


class _quiet_accelerate:
    """Silence accelerate's 'Device N is not available' while planning GPUs this machine lacks."""

    names = ("accelerate.utils.modeling", "accelerate.utils")

    def __enter__(self):
        self.levels = [(logging.getLogger(n), logging.getLogger(n).level) for n in self.names]
        for logger, _ in self.levels:
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for logger, level in self.levels:
            logger.setLevel(level)
