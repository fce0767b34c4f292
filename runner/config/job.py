"""A whole job: its sections, output, retries and Ray; the hash of the settings that change results."""

from __future__ import annotations

import hashlib
import json
from typing import ClassVar

from pydantic import Field, model_validator

from runner.config.base import _Strict
from runner.config.data import DataConfig, PromptConfig
from runner.config.generation import BatchingConfig, SamplingConfig
from runner.config.model import ModelConfig, PlacementConfig


class OutputConfig(_Strict):
    """Where generations go."""

    path: str = Field(
        "outputs/job",
        min_length=1,
        description="output directory (local, or a pyarrow filesystem URI such as s3://bucket/dir)",
    )
    rows_per_file: int = Field(10000, ge=1, description="rows per Parquet file")
    token_ids: bool = Field(False, description="add `token_ids`: the generated token ids as a list column")
    parse_json: bool = Field(
        False,
        description="add `parsed`: the generation as JSON when it parses (and, with a schema, validates), else null",
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
        "replica while that has restarts left (a lost node makes many retries: runner.orchestration.cluster)",
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

    model: ModelConfig = Field(..., description="the model to load and how (dtype, attention, quantization)")
    data: DataConfig = Field(..., description="the input rows and how each becomes a prompt")
    placement: PlacementConfig = Field(
        default_factory=PlacementConfig, description="replicas and the GPUs each holds"
    )
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig, description="how tokens are drawn (greedy by default)"
    )
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig, description="how a replica batches its rows"
    )
    output: OutputConfig = Field(
        default_factory=OutputConfig, description="where and how the Parquet output is written"
    )
    retries: RetryConfig = Field(default_factory=RetryConfig, description="how dying replicas are survived")
    ray: RayConfig = Field(default_factory=RayConfig, description="the Ray cluster (default: a local Ray)")

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
