"""The engine's request and result records."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Request:
    """One prompt to complete: token ids plus its own new-token limit."""

    id: str
    prompt_ids: list[int]
    max_new_tokens: int


@dataclass
class Completion:
    """The engine's answer for one request: one entry per sample (n)."""

    id: str
    token_ids: list[list[int]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def generated_tokens(self) -> int:
        return sum(len(t) for t in self.token_ids)

    @classmethod
    def failed(cls, request_id: str, reason: str) -> Completion:
        return cls(id=request_id, finish_reasons=["error"], error=reason)
