"""Job configuration: pydantic models loaded from YAML plus ``--set a.b=c`` overrides.

Every model forbids unknown keys, so a typo fails with its dotted path instead of being ignored.
`load_config` is the one entry point; `ConfigError` carries a one-line message naming the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runner.errors import ConfigError, first_line

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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

    path: str = Field(..., min_length=1, description="local directory, hub id, or demo:tiny-llama")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    tokenizer: str | None = Field(None, description="tokenizer path if not the model's")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto = bfloat16 on GPUs that support it, else float16 on GPU, float32 on CPU"
    )
    trust_remote_code: bool = Field(False, description="allow the model repo's own Python code")
    attention: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="auto = flash_attention_2 when usable, else sdpa (reason logged)"
    )
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    adapter: str | None = Field(None, min_length=1, description="a PEFT LoRA adapter merged into the model")
    adapters: dict[str, str] | None = Field(
        None, description="named PEFT adapters over one base model, picked per row by data.adapter_column"
    )

    @model_validator(mode="after")
    def _one_adapter_kind(self) -> ModelConfig:
        if self.adapter and self.adapters:
            raise ValueError("set adapter (one, merged) or adapters (several, per row), not both")
        return self


def parse_size(value: str | int) -> int:
    """'20GiB' -> bytes. Raises ValueError naming the accepted units."""
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"unreadable size {value!r}: use e.g. 20GiB, 500MB, 64GB")
    units = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
    units |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    return int(float(match.group(1)) * units[match.group(2).lower()])


class PlacementConfig(_Strict):
    """How replicas map onto the cluster's GPUs."""

    gpus_per_replica: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        1, description="GPUs each replica holds; the model is split over them; auto: planned (runner plan)"
    )
    replicas: int | None = Field(None, ge=1, description="default: cluster GPUs // gpus_per_replica (CPU: 1)")
    device_map: Literal["auto"] | None = Field(
        None, description="'auto' splits the model over the replica's GPUs"
    )
    max_memory: dict[str, str] | Literal["auto"] | None = Field(
        None,
        description="per-device cap for device_map=auto, e.g. {0: 20GiB, 1: 20GiB, cpu: 64GiB}; auto: planned",
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


class PromptConfig(_Strict):
    """Where the prompt text comes from: exactly one of column, template, messages_column."""

    column: str | None = Field(None, description="use this column as the prompt")
    template: str | None = Field(None, description="Jinja template over the row's columns")
    messages_column: str | None = Field(
        None, description="list of {role, content}, rendered by the chat template"
    )
    add_generation_prompt: bool = Field(True, description="chat template: open the assistant turn")
    chat: bool = Field(
        False, description="wrap the column or template text as a user message (chat template)"
    )
    system: str | None = Field(None, description="a system message put before the user message (chat)")
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra variables for the chat template, e.g. enable_thinking: false"
    )
    assistant_prefix: str | None = Field(None, description="text that starts the answer (prefilled)")

    @model_validator(mode="after")
    def _exactly_one(self) -> PromptConfig:
        given = [n for n in ("column", "template", "messages_column") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(f"set exactly one of column, template, messages_column (got {given or 'none'})")
        if self.system is not None and not (self.chat or self.messages_column):
            raise ValueError("system needs chat: true (or messages_column)")
        return self

    @property
    def uses_chat_template(self) -> bool:
        return bool(self.chat or self.messages_column)


class DataConfig(_Strict):
    """The input dataset."""

    # The fields naming a per-row generation option's column (runner.row_options).
    OPTION_COLUMN_FIELDS: ClassVar[tuple[str, ...]] = (
        "seed_column",
        "temperature_column",
        "top_p_column",
        "json_schema_column",
        "adapter_column",
    )

    source: str = Field(..., min_length=1, description="file, directory, glob, save_to_disk dir, or hub name")
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "saved", "hub"] = Field(
        "auto", description="auto = by extension / directory contents"
    )
    split: str = Field("train", description="split for hub datasets and DatasetDict directories")
    id_column: str | None = Field(None, description="unique row id column; default: ids assigned by position")
    prompt: PromptConfig = Field(default_factory=lambda: PromptConfig(column="prompt"))
    carry_columns: list[str] = Field(default_factory=list, description="input columns copied to the output")
    max_new_tokens_column: str | None = Field(None, description="per-row max_new_tokens column")
    limit: int | None = Field(None, ge=1, description="only the first N rows")
    seed_column: str | None = Field(None, description="per-row sampling seed column")
    temperature_column: str | None = Field(None, description="per-row temperature column")
    top_p_column: str | None = Field(None, description="per-row top_p column")
    json_schema_column: str | None = Field(
        None, description="per-row JSON schema column (object or JSON text)"
    )
    adapter_column: str | None = Field(None, description="per-row adapter name (one of model.adapters)")
    overlong: Literal["error", "truncate_left"] = Field(
        "error",
        description="prompt + max_new_tokens over the model's context: error row, or drop oldest tokens",
    )


class SamplingConfig(_Strict):
    """Decoding parameters (greedy when temperature == 0)."""

    max_new_tokens: int = Field(128, ge=1, description="default new-token limit per row")
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = off")
    seed: int = Field(0, ge=0, description="sampling seed (runs with the same config are reproducible)")
    stop: list[str] = Field(default_factory=list, description="stop strings (excluded from the output)")
    n: int = Field(1, ge=1, description="samples per prompt (generation becomes a list when > 1)")
    min_p: float = Field(
        0.0, ge=0, le=1, description="drop tokens below min_p x the top probability; 0 = off"
    )
    repetition_penalty: float = Field(
        1.0, gt=0, description="CTRL penalty on prompt + generated tokens; 1 = off"
    )
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="OpenAI: subtracted once per seen token")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="OpenAI: subtracted per occurrence")
    stop_token_ids: list[int] = Field(default_factory=list, description="token ids that end a row like EOS")
    logprobs: int | None = Field(None, ge=0, le=20, description="chosen token's logprob + top-K per token")
    prompt_logprobs: bool = Field(False, description="logprob of every prompt token")
    json_schema: str | None = Field(None, description="JSON schema: inline mapping, JSON text or a file path")
    regex: str | None = Field(None, min_length=1, description="regular expression the output must match")
    choices: list[str] | None = Field(None, min_length=1, description="the output is one of these strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @field_validator("json_schema", mode="before")
    @classmethod
    def _load_schema(cls, value: Any) -> Any:
        if value is None:
            return None
        from runner.engine.constraints import load_schema

        return load_schema(value)

    @field_validator("json_schema", "regex", "choices")
    @classmethod
    def _compiles(cls, value: Any, info) -> Any:
        if value is None:
            return None
        from runner.engine.constraints import check_config

        return check_config(info.field_name, value)

    @model_validator(mode="after")
    def _one_constraint(self) -> SamplingConfig:
        given = [n for n in ("json_schema", "regex", "choices") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"set at most one of json_schema, regex, choices (got {', '.join(given)})")
        return self


class BatchingConfig(_Strict):
    """How a replica groups rows into generate calls."""

    strategy: Literal["auto", "padded", "continuous", "generate"] = Field(
        "auto",
        description="padded: length-sorted static batches, finished rows leave; continuous: packed, paged KV "
        "cache, rows join and leave every step; generate: model.generate on equal-length prompts (any "
        "model, e.g. state-space); auto: the faster strategy exact for the model (continuous on one GPU)",
    )
    token_budget: int | None = Field(
        None,
        ge=64,
        description="max (prompt + new) token positions in flight; default: from free device memory",
    )
    memory_fraction: float = Field(
        0.8,
        gt=0,
        le=0.95,
        description="share of free device memory (after loading) used when token_budget is unset",
    )
    max_batch_size: int = Field(64, ge=1, description="max rows computed together in one forward pass")
    max_padding: float = Field(
        0.1,
        ge=0,
        le=1,
        description="padded: pad positions allowed in a prefill, as a share of its prompt tokens",
    )
    stall_timeout_s: float | None = Field(
        600.0,
        gt=0,
        description="an engine call whose rows make no progress for this long fails as engine errors",
    )
    rows_per_task: int = Field(256, ge=1, description="rows a replica receives per Ray Data batch")
    batches_in_flight: int = Field(
        2,
        ge=1,
        le=16,
        description="Ray Data batches a replica works on at once, so its device never waits for input",
    )


class OutputConfig(_Strict):
    """Where generations go."""

    path: str = Field(
        "outputs/job", min_length=1, description="output directory (local or pyarrow/fsspec URI)"
    )
    rows_per_file: int = Field(10000, ge=1, description="rows per Parquet file")
    token_ids: bool = Field(False, description="add the generated token ids as a list column")
    parse_json: bool = Field(
        False, description="add `parsed`: the generation parsed as JSON (null if invalid)"
    )
    flush_seconds: float = Field(
        60.0, gt=0, description="commit buffered rows at least this often (bounds what a kill loses)"
    )
    lease_timeout_s: float = Field(
        120.0,
        ge=3,
        description="a driver's lease on output.path is taken over after this long without heartbeat",
    )


class RetryConfig(_Strict):
    """How far the job goes to survive replicas that die (crash, OOM kill, lost node)."""

    replica_restarts: int = Field(
        3, ge=0, description="times Ray restarts a dead replica (model reloaded) before the job fails"
    )
    task_retries: int = Field(
        3,
        ge=0,
        description="0: a batch whose replica died fails the job; else it runs again on the restarted "
        "replica while that has restarts left (a lost node makes many retries: runner.cluster)",
    )


class RayConfig(_Strict):
    """Cluster connection. address None starts a local Ray."""

    address: str | None = Field(None, description="'auto', ray://host:port, or None for a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="local Ray only: CPUs to offer")
    num_gpus: int | None = Field(None, ge=0, description="local Ray only: GPUs to offer (default: detected)")


# The sections whose settings change generations: hashed to guard resumes, diffed to explain a refusal.
RESULT_SECTIONS = ("model", "data", "sampling")


class JobConfig(_Strict):
    """A whole generation job."""

    model: ModelConfig
    data: DataConfig
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    retries: RetryConfig = Field(default_factory=RetryConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    # A job kind whose config adds result-changing sections (eval's scoring) extends this.
    result_sections: ClassVar[tuple[str, ...]] = RESULT_SECTIONS

    @model_validator(mode="after")
    def _adapter_column_needs_adapters(self) -> JobConfig:
        # A job kind may have no single data section (eval's `tasks`).
        if getattr(self.data, "adapter_column", None) and not self.model.adapters:
            raise ValueError("data.adapter_column needs model.adapters ({name: path, ...})")
        return self

    def result_hash(self) -> str:
        """Hash of the settings that change results (not output path, placement, retries or Ray)."""
        relevant = _without_later_defaults(self.model_dump(include=set(self.result_sections), mode="json"))
        # These change the part files' columns: a resume must not mix files with and without them.
        columns = {k: v for k, v in self.output.model_dump().items() if k in _OUTPUT_COLUMN_OPTIONS and v}
        if columns:
            relevant["output"] = columns
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


# Result-changing options added after jobs were written: left out of the hash while at their default,
# so a job written before they existed still resumes (its hash is unchanged).
_LATER_OPTIONS = {
    "model": ModelConfig(path="x"),
    "data": DataConfig(source="x"),
    "sampling": SamplingConfig(),
}
_LATER_FIELDS = {
    "model": ("adapter", "adapters"),
    "data": DataConfig.OPTION_COLUMN_FIELDS,
    "sampling": (
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "stop_token_ids",
        "logprobs",
        "prompt_logprobs",
        "json_schema",
        "regex",
        "choices",
    ),
    "data.prompt": ("chat", "system", "chat_template_kwargs", "assistant_prefix"),
}
_OUTPUT_COLUMN_OPTIONS = ("token_ids", "parse_json")


def _without_later_defaults(dump: dict) -> dict:
    defaults = {name: cfg.model_dump(mode="json") for name, cfg in _LATER_OPTIONS.items()}
    defaults["data.prompt"] = PromptConfig(column="x").model_dump(mode="json")
    for where, names in _LATER_FIELDS.items():
        section, _, sub = where.partition(".")
        node = dump.get(section)
        node = node.get(sub) if sub and isinstance(node, dict) else node
        for name in names if isinstance(node, dict) else ():
            if name in node and node[name] == defaults[where][name]:
                del node[name]
    return dump


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` overrides; values are parsed as YAML scalars (``3``, ``true``, ``[a, b]``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return tree


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if first["type"] == "missing":
        return f"{where}: required field is missing"
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    return f"{where}: {msg}{shown}"


def build_config(tree: dict, kind: type[JobConfig] = JobConfig) -> JobConfig:
    """Validate a plain dict into a JobConfig (or a job kind's subclass), raising ConfigError with one line."""
    try:
        return kind.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, kind: type[JobConfig] = JobConfig
) -> JobConfig:
    """Read a YAML config (or none) and apply overrides; `kind` is the job kind's config class."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({first_line(err)})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    return build_config(apply_overrides(tree, overrides or []), kind)
