"""The model section (path, dtype, attention, quantization, adapters) and where replicas run (placement)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from runner.config.base import _Strict, parse_size


class QuantizationConfig(_Strict):
    """bitsandbytes loading, passed to transformers as a `BitsAndBytesConfig`."""

    mode: Literal["none", "8bit", "4bit"] = Field("none", description="none, LLM.int8() 8-bit or 4-bit")
    llm_int8_threshold: float = Field(6.0, gt=0, description="8-bit outlier threshold (LLM.int8)")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type")
    double_quant: bool = Field(True, description="4-bit nested quantization of the scales")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="4-bit matmul dtype; auto = the model dtype"
    )


class ModelConfig(_Strict):
    """Which model to load and how."""

    path: str = Field(
        ...,
        min_length=1,
        description="local directory, hub id, or a built-in demo model (demo:tiny-llama, demo:small-llama)",
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    tokenizer: str | None = Field(
        None, description="a separate tokenizer (directory or hub id); default: the model's"
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto = bfloat16 on GPUs that support it, else float16 on GPU, float32 on CPU"
    )
    trust_remote_code: bool = Field(False, description="allow the model repo's own Python code")
    attention: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto",
        description="auto = flash_attention_2 when flash_attn imports, a CUDA GPU and fp16/bf16 are present and the "
        "model class supports it, else sdpa where the class supports it, else eager (reason logged); an "
        "explicit choice that cannot run here is an error naming the model",
    )
    quantization: QuantizationConfig = Field(
        default_factory=QuantizationConfig, description="bitsandbytes 8-bit / 4-bit loading (default: none)"
    )
    adapter: str | None = Field(
        None,
        min_length=1,
        description="a PEFT LoRA adapter (directory or hub id) merged into the weights at load",
    )
    adapters: dict[str, str] | None = Field(
        None,
        description="{name: path}: several PEFT adapters over one base model, picked per row by data.adapter_column "
        "(rows batched by adapter; runs the padded strategy)",
    )

    @model_validator(mode="after")
    def _one_adapter_kind(self) -> ModelConfig:
        if self.adapter and self.adapters:
            raise ValueError("set adapter (one, merged) or adapters (several, per row), not both")
        return self


class PlacementConfig(_Strict):
    """How replicas map onto the cluster's GPUs."""

    gpus_per_replica: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        1, description="GPUs each replica holds; the model is split over them; auto: planned (runner plan)"
    )
    replicas: int | None = Field(
        None,
        ge=1,
        description="default: cluster GPUs // gpus_per_replica; one CPU replica when the cluster has no GPUs",
    )
    device_map: Literal["auto"] | None = Field(
        None, description="'auto' splits the model over the replica's GPUs"
    )
    max_memory: dict[str, str] | Literal["auto"] | None = Field(
        None,
        description="per-device cap for device_map=auto, e.g. {0: 20GiB, 1: 20GiB, cpu: 64GiB} (GPU indices are "
        "local to the replica); auto: planned",
    )
    cpus_per_replica: float = Field(
        0.5, gt=0, description="Ray CPUs per replica (fractional leaves room for I/O)"
    )

    @field_validator("gpus_per_replica", mode="before")
    @classmethod
    def _count_or_auto(cls, value: Any) -> Any:
        bad_text = isinstance(value, str) and value != "auto" and not value.isdigit()
        if bad_text or (isinstance(value, int) and value < 0):
            raise ValueError("must be a number of GPUs (0 or more) or auto")
        return value

    @field_validator("max_memory", mode="before")
    @classmethod
    def _check_max_memory(cls, value: Any) -> Any:
        if value is None or value == "auto":
            return value
        if not isinstance(value, dict):
            raise ValueError("must be a mapping of device -> size, e.g. {0: 20GiB, cpu: 64GiB}, or auto")
        out = {}
        for device, size in value.items():
            key = str(device)
            if not (key.isdigit() or key in ("cpu", "disk", "mps")):
                raise ValueError(f"unknown device {device!r}: use GPU indices 0, 1, ... or cpu / disk")
            parse_size(size)
            out[key] = str(size)
        return out

    @model_validator(mode="after")
    def _gpu_keys_fit(self) -> PlacementConfig:
        if not isinstance(self.max_memory, dict) or self.gpus_per_replica == "auto":
            return self  # the planner sets them together (runner.planning)
        gpu_keys = [int(k) for k in self.max_memory if k.isdigit()]
        if gpu_keys and max(gpu_keys) >= max(self.gpus_per_replica, 1):
            raise ValueError(
                f"max_memory names GPU {max(gpu_keys)} but each replica sees only "
                f"{self.gpus_per_replica} GPU(s) (indices are local to the replica)"
            )
        return self
