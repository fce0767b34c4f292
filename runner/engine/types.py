"""The engine's request and result records."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


class Progress:
    """The steps one engine call has made: a forward that advanced any of its rows (a prefill, a
    decode step that gave a row a token, a scoring batch). The strategies call `step()` from whatever
    thread computes; the watchdog (runner.engine.watchdog) reads `last`. Counted by the engine itself, per
    call, so a CUDA-graph replay (which skips forward hooks) still counts and a call whose rows were
    lost is seen stalled even while other calls progress."""

    __slots__ = ("steps", "last")

    def __init__(self) -> None:
        self.steps = 0
        self.last = time.monotonic()

    def step(self) -> None:
        self.steps += 1
        self.last = time.monotonic()


@dataclass(frozen=True)
class RowSampling:
    """A row's own sampling values (from data.*_column, or an OpenAI batch request's body); None keeps
    the job's."""

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    n: int | None = None
    stop: tuple[str, ...] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: int | None = None  # top-K alternatives per generated token (0: the chosen token's only)

    def own(self, name: str, job_value):
        """The row's value of `name`, else the job's."""
        value = getattr(self, name)
        return job_value if value is None else value


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
    progress: Progress | None = field(default=None, compare=False, repr=False)  # its call's (watchdog)


def stepped(requests) -> None:
    """A forward advanced these requests: count one step for each distinct call among them."""
    for progress in {id(r.progress): r.progress for r in requests if r.progress is not None}.values():
        progress.step()


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
