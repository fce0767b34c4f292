"""How tokens are drawn (sampling) and how rows are batched on a replica (batching)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from runner.config.base import _Strict


class SamplingConfig(_Strict):
    """Decoding parameters (greedy when temperature == 0)."""

    max_new_tokens: int = Field(128, ge=1, description="default new-token limit per row")
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(
        1.0, gt=0, le=1, description="nucleus sampling: keep the top tokens up to this mass; 1 = off"
    )
    top_k: int = Field(0, ge=0, description="0 = off")
    seed: int = Field(0, ge=0, description="sampling seed (runs with the same config are reproducible)")
    stop: list[str] = Field(default_factory=list, description="stop strings (excluded from the output)")
    n: int = Field(
        1,
        ge=1,
        description="samples per prompt (when > 1 all are in the `samples` column; `generation` is the first)",
    )
    min_p: float = Field(
        0.0,
        ge=0,
        le=1,
        description="drop tokens below min_p x the top probability (transformers' MinPLogitsWarper); 0 = off",
    )
    repetition_penalty: float = Field(
        1.0, gt=0, description="CTRL penalty on prompt + generated tokens; 1 = off"
    )
    presence_penalty: float = Field(
        0.0,
        ge=-2,
        le=2,
        description="OpenAI semantics: subtracted once from each token generated so far; 0 = off",
    )
    frequency_penalty: float = Field(
        0.0,
        ge=-2,
        le=2,
        description="OpenAI semantics: subtracted per occurrence in the generated tokens; 0 = off",
    )
    stop_token_ids: list[int] = Field(
        default_factory=list,
        description="token ids that end a row like EOS (cut from the output, finish_reason stop)",
    )
    logprobs: int | None = Field(
        None,
        ge=0,
        le=20,
        description="K: each generated token's logprob and the top-K alternatives (raw model distribution)",
    )
    prompt_logprobs: bool = Field(False, description="add each prompt token's logprob (the first is null)")
    json_schema: str | None = Field(
        None,
        description="structured output: a JSON schema (inline mapping, JSON text or a .json file path), enforced while decoding (xgrammar)",
    )
    regex: str | None = Field(
        None, min_length=1, description="structured output: a regular expression the output must match"
    )
    choices: list[str] | None = Field(
        None, min_length=1, description="structured output: the output is one of these strings"
    )

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
        "model, e.g. state-space); auto: among the strategies exact for the model, the device's (padded on CPU, "
        "continuous on one GPU), raced against the other on a full batch each (outputs kept) when a replica has "
        "16 batches of rows or more ahead",
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
    prefix_sharing: bool = Field(
        True,
        description="padded, continuous and scoring: rows of a replica whose prompts begin with the same tokens "
        "compute that prefix once and prefill only the rest (see prefix_min_tokens); false: every row its whole "
        "prompt",
    )
    prefix_min_tokens: int = Field(
        64, ge=1, description="the shortest common prompt prefix worth computing once (one KV page: 64)"
    )
    stall_timeout_s: float | None = Field(
        600.0,
        gt=0,
        description="an engine call whose rows make no progress for this long fails as engine errors and the "
        "replica restarts; also bounds the start-up probe",
    )
    rows_per_task: int = Field(
        256, ge=1, description="rows a replica receives per Ray Data batch (also the unit Ray Data schedules)"
    )
    batches_in_flight: int = Field(
        2,
        ge=1,
        le=16,
        description="Ray Data batches a replica works on at once, so its device never waits for input",
    )
