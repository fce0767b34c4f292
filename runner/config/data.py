"""The data section: where rows come from, how a row becomes a prompt, per-row option columns."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from runner.config.base import _Strict


class PromptConfig(_Strict):
    """Where the prompt text comes from: exactly one of column, template, messages_column."""

    column: str | None = Field(None, description="use this column as the prompt")
    template: str | None = Field(
        None, description="Jinja template over the row's columns (sandboxed), e.g. 'Q: {{ question }}'"
    )
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
    assistant_prefix: str | None = Field(
        None,
        description="text after the chat template that opens the answer: the model continues from it, the generation does not repeat it",
    )

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

    # The fields naming a per-row generation option's column (jobs.generate.row_options).
    OPTION_COLUMN_FIELDS: ClassVar[tuple[str, ...]] = (
        "seed_column",
        "temperature_column",
        "top_p_column",
        "json_schema_column",
        "adapter_column",
    )

    source: str = Field(
        ...,
        min_length=1,
        description="JSONL / JSON / CSV / Parquet file, directory or glob, a pyarrow filesystem URI (s3://, gs://), "
        "a save_to_disk directory, or a hub dataset name; streamed by Ray Data read tasks",
    )
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "saved", "hub"] = Field(
        "auto", description="auto = by extension / directory contents"
    )
    split: str = Field("train", description="split for hub datasets and DatasetDict directories")
    id_column: str | None = Field(None, description="unique row id column; default: ids assigned by position")
    prompt: PromptConfig = Field(
        default_factory=lambda: PromptConfig(column="prompt"),
        description="how a row becomes a prompt (default: the `prompt` column as is)",
    )
    carry_columns: list[str] = Field(default_factory=list, description="input columns copied to the output")
    max_new_tokens_column: str | None = Field(
        None, description="per-row max_new_tokens column (a bad value: an error row)"
    )
    limit: int | None = Field(None, ge=1, description="only the first N rows")
    seed_column: str | None = Field(
        None,
        description="per-row sampling seed column (null cell: the job's value; a bad value: an error row)",
    )
    temperature_column: str | None = Field(None, description="per-row temperature column")
    top_p_column: str | None = Field(None, description="per-row top_p column")
    json_schema_column: str | None = Field(
        None,
        description="per-row JSON schema column (object or JSON text; overrides sampling's constraint; one that does not compile: an error row)",
    )
    adapter_column: str | None = Field(
        None, description="per-row adapter name (one of model.adapters; null: the base model)"
    )
    overlong: Literal["error", "truncate_left"] = Field(
        "error",
        description="prompt + max_new_tokens over the model's context: error row, or drop oldest tokens",
    )
