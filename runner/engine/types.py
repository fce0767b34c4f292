"""The engine's request and result records."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RowSampling:
    """A row's own sampling values (from data.*_column); None keeps the job's."""

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class Constraint:
    """What a row's output must match: kind is json_schema (spec = schema JSON text), regex or choices
    (spec = JSON list of strings). Hashable: compiled grammars are cached by it."""

    kind: str
    spec: str


@dataclass
class Request:
    """One prompt to complete: token ids plus its own new-token limit, and optional per-row options."""

    id: str
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: RowSampling | None = None
    constraint: Constraint | None = None
    adapter: str | None = None  # a name of model.adapters; None = the base model


@dataclass(frozen=True)
class TokenLogprob:
    """A token and its log-probability under the model's raw distribution (see runner.engine.logprobs)."""

    token_id: int
    logprob: float


@dataclass
class Completion:
    """The engine's answer for one request: one entry per sample (n)."""

    id: str
    token_ids: list[list[int]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    error: str | None = None
    # sampling.logprobs: per sample, per generated token, (chosen, its top-K alternatives)
    logprobs: list[list[tuple[TokenLogprob, list[TokenLogprob]]]] | None = None
    prompt_logprobs: list[float | None] | None = None  # sampling.prompt_logprobs; the first is None

    @property
    def generated_tokens(self) -> int:
        return sum(len(t) for t in self.token_ids)

    @classmethod
    def failed(cls, request_id: str, reason: str) -> Completion:
        return cls(id=request_id, finish_reasons=["error"], error=reason)
