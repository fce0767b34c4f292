"""The eval job's configuration: a generate config plus how each row is scored.

Two forms. One task: a generate config plus a `scoring` section (the task is named by `name`).
Several tasks: a `tasks:` list, each with its own `name`, `data` and `scoring`, sharing the model,
placement, sampling and batching (one replica pool, the model loaded once).
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from runner.config import RESULT_SECTIONS, DataConfig, JobConfig
from runner.config.base import _Strict
from runner.io.outputs import OUTPUT_COLUMNS

MULTIPLE_CHOICE = "multiple_choice"
GENERATION_SCORERS = ("exact_match", "regex", "contains", "choice_letter", "f1", "numeric")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
# The eval output's own columns (jobs.eval.stage.output_schema): generate's output columns, with
# the task after `id` and the target and the choices' log-likelihoods after `generation`, so a column
# generate adds (error_kind) is an eval column too. Metric columns come after them.
_GENERATED = OUTPUT_COLUMNS.index("generation") + 1
RESERVED_COLUMNS = (
    "id",
    "task",
    *OUTPUT_COLUMNS[1:_GENERATED],
    "target",
    "choice_logprobs",
    *OUTPUT_COLUMNS[_GENERATED:],
)


class ScoringConfig(_Strict):
    """How a task's rows are scored: a scorer over the generation, or multiple-choice log-likelihoods."""

    scorer: str = Field(
        ...,
        min_length=1,
        description=f"{', '.join(GENERATION_SCORERS)}, {MULTIPLE_CHOICE}, or module:function (row, generation -> float)",
    )
    target_column: str | None = Field(
        None,
        description="column holding the reference answer (a list = any of them); multiple_choice: index or text",
    )
    metric: str | None = Field(
        None, description="name of the metric and its output column; default: the scorer's (function) name"
    )
    strip: bool = Field(True, description="compare without surrounding whitespace")
    lowercase: bool = Field(False, description="compare case-insensitively")
    strip_punctuation: bool = Field(False, description="compare without punctuation")
    pattern: str | None = Field(
        None, description="regex: extract the answer with this pattern (group 1 if it has groups)"
    )
    match: Literal["first", "last"] = Field("last", description="regex: which match of the pattern counts")
    tolerance: float = Field(0.0, ge=0, description="numeric: absolute tolerance")
    rel_tolerance: float = Field(0.0, ge=0, description="numeric: relative tolerance")
    choices_column: str | None = Field(
        None, description="multiple_choice: column holding the list of choices"
    )
    target_delimiter: str = Field(
        " ", description="multiple_choice: text between the context and each choice (lm-eval's default)"
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"not a valid regular expression ({err})") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ScoringConfig:
        known = (*GENERATION_SCORERS, MULTIPLE_CHOICE)
        if self.scorer not in known and ":" not in self.scorer:
            raise ValueError(
                f"unknown scorer {self.scorer!r} (known: {', '.join(known)}, or module:function)"
            )
        if self.scorer == "regex" and not self.pattern:
            raise ValueError("scorer regex needs a pattern, e.g. pattern: '(-?\\d+(?:\\.\\d+)?)'")
        if (self.scorer == MULTIPLE_CHOICE) != (self.choices_column is not None):
            raise ValueError("choices_column is set exactly when scorer is multiple_choice")
        if ":" not in self.scorer and not self.target_column:
            raise ValueError(f"scorer {self.scorer} needs target_column")
        if self.scorer == MULTIPLE_CHOICE and self.metric:
            raise ValueError("multiple_choice reports acc and acc_norm; metric cannot rename them")
        return self

    @property
    def loglikelihood(self) -> bool:
        """Scored by log-likelihoods of the choices, no generation."""
        return self.scorer == MULTIPLE_CHOICE

    @property
    def metrics(self) -> list[str]:
        """The metric names this scoring reports (also the per-row output columns)."""
        if self.loglikelihood:
            return ["acc", "acc_norm"]
        return [self.metric or self.scorer.rsplit(":", 1)[-1]]


class TaskConfig(_Strict):
    """One evaluation task: its rows and how they are scored."""

    name: str = Field(..., description="task name: letters, digits, _ . - (row ids become NAME/id)")
    data: DataConfig = Field(..., description="the task's input rows (a `data` section)")
    scoring: ScoringConfig = Field(..., description="how the task's rows are scored (a `scoring` section)")

    @field_validator("name")
    @classmethod
    def _plain(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("use only letters, digits, '_', '.', '-'")
        return value


class EvalConfig(JobConfig):
    """An evaluation job: one task (`data` + `scoring`) or a `tasks` list sharing model and sampling."""

    name: str = Field("eval", description="the task's name in the one-task form")
    data: DataConfig | None = Field(None, description="one-task form: the input rows (a `data` section)")
    scoring: ScoringConfig | None = Field(None, description="one-task form: how rows are scored")
    tasks: list[TaskConfig] | None = Field(
        None, description="several tasks, each with name, data and scoring"
    )

    result_sections: ClassVar[tuple[str, ...]] = (*RESULT_SECTIONS, "name", "scoring", "tasks")

    @field_validator("name")
    @classmethod
    def _plain(cls, value: str) -> str:
        return TaskConfig._plain(value)

    @model_validator(mode="after")
    def _one_form(self) -> EvalConfig:
        if self.tasks is None:
            if self.data is None or self.scoring is None:
                raise ValueError("set data and scoring (one task), or tasks (several)")
            if self.sampling.n != 1:
                raise ValueError("sampling.n must be 1 in an eval job (one generation is scored per row)")
            return self
        if self.data is not None or self.scoring is not None:
            raise ValueError("with tasks, data and scoring go inside each task")
        if not self.tasks:
            raise ValueError("tasks: the list is empty")
        names = [t.name for t in self.tasks]
        if self.sampling.n != 1:
            raise ValueError("sampling.n must be 1 in an eval job (one generation is scored per row)")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"tasks: task name {twice[0]!r} is used twice")
        return self

    @model_validator(mode="after")
    def _metric_names_free(self) -> EvalConfig:
        taken = set(self.metric_columns()) & set(RESERVED_COLUMNS)
        if taken:
            raise ValueError(f"metric name {sorted(taken)[0]!r} is an output column; set scoring.metric")
        return self

    def task_list(self) -> list[TaskConfig]:
        """Every task, the one-task form included, in config order."""
        if self.tasks is not None:
            return list(self.tasks)
        return [TaskConfig(name=self.name, data=self.data, scoring=self.scoring)]

    def metric_columns(self) -> list[str]:
        """Every task's metric names, in order: the per-row score columns of the output."""
        return list(dict.fromkeys(m for task in self.task_list() for m in task.scoring.metrics))
