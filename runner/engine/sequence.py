"""One sample of one request as it is generated, and the rules that end it.

Every strategy turns requests into `Sequence`s (n per request when sampling), appends tokens to them,
asks the `Stopper` after each token whether the sequence is finished, and finally has the `Stopper`
turn the finished sequences back into one `Completion` per request. Keeping the stopping rules here
means EOS, per-row limits and stop strings behave identically whichever strategy produced the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runner.config import SamplingConfig
from runner.engine.sampling import row_key, row_params, step_key
from runner.engine.types import Completion, Request


@dataclass
class Sequence:
    """The tokens generated so far for sample `sample` of `request`."""

    request: Request
    sample: int
    key: int
    tokens: list[int] = field(default_factory=list)
    finished: bool = False
    matcher: Any = None  # the row's grammar state when it has a constraint (runner.engine.constraints)

    @property
    def position(self) -> int:
        """Position of the next token in the full sequence (prompt + generated)."""
        return len(self.request.prompt_ids) + len(self.tokens)

    def next_key(self) -> int:
        """Sampling key of the next token (see runner.engine.sampling)."""
        return step_key(self.key, self.position)


def expand(requests: list[Request], sampling: SamplingConfig) -> list[Sequence]:
    """The sequences to compute: n per request when sampling, one when greedy (n greedy samples are equal).

    A row's own temperature and seed (Request.sampling) decide for that row."""
    seqs = []
    for r in requests:
        params = row_params(sampling, r)
        per_request = 1 if params.greedy else sampling.n
        seqs += [Sequence(r, j, row_key(params.seed, r.id, j)) for j in range(per_request)]
    return seqs


def eos_ids(tokenizer, model, sampling: SamplingConfig | None = None) -> set[int]:
    """End-of-sequence ids: the model's generation config, else the tokenizer's; plus the job's
    `sampling.stop_token_ids`, which end a row the same way (cut from the output, finish reason stop)."""
    ids = model.generation_config.eos_token_id if model.generation_config else None
    ids = ids if ids is not None else tokenizer.eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    extra = sampling.stop_token_ids if sampling is not None else []
    return {i for i in [*ids, *extra] if i is not None and i >= 0}


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Text up to the earliest stop string (excluded); whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Stopper:
    """Decides when a sequence is finished and what its final tokens and text are."""

    def __init__(self, tokenizer, eos: set[int], stops: list[str]):
        self.tokenizer = tokenizer
        self.eos = eos
        self.stops = stops
        # A stop string of k characters spans at most 4 bytes each, and every token is at least one byte.
        self.window = 4 * max((len(s) for s in stops), default=0) + 4

    def update(self, seq: Sequence) -> bool:
        """After a token was appended: mark and return whether the sequence is now finished."""
        tokens = seq.tokens
        seq.finished = (
            tokens[-1] in self.eos or len(tokens) >= seq.request.max_new_tokens or self.has_stop(tokens)
        )
        return seq.finished

    def has_stop(self, tokens: list[int]) -> bool:
        """Whether the text of the last tokens holds a stop string (checked after every new token)."""
        return bool(self.stops) and self._holds_stop(tokens[-self.window :])

    def _holds_stop(self, tokens: list[int]) -> bool:
        return cut_at_stop(self._text(tokens), self.stops)[1]

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def final(self, tokens: list[int], limit: int) -> tuple[list[int], str, str]:
        """(tokens, text, finish reason) of a finished sample: cut at EOS, limit or stop string."""
        tokens = tokens[:limit]
        reason = "length"
        eos_at = next((i for i, t in enumerate(tokens) if t in self.eos), None)
        if eos_at is not None:
            tokens, reason = tokens[:eos_at], "stop"
        text, stopped = cut_at_stop(self._text(tokens), self.stops)
        if stopped:
            return self._through_stop(tokens), text, "stop"
        return tokens, text, reason

    def _through_stop(self, tokens: list[int]) -> list[int]:
        """The shortest prefix whose text holds a stop string (binary search: holding one is monotone)."""
        low, high = 1, len(tokens)
        while low < high:
            mid = (low + high) // 2
            if self._holds_stop(tokens[:mid]):
                high = mid
            else:
                low = mid + 1
        return tokens[:high]

    def completions(self, requests: list[Request], seqs: list[Sequence], n: int) -> list[Completion]:
        """One Completion per request (in request order) from its finished sequences."""
        by_request: dict[str, list[Sequence]] = {}
        for seq in seqs:
            by_request.setdefault(seq.request.id, []).append(seq)
        return [self._complete(r, by_request[r.id], n) for r in requests]

    def _complete(self, request: Request, seqs: list[Sequence], n: int) -> Completion:
        done = Completion(id=request.id)
        for seq in sorted(seqs, key=lambda s: s.sample) * (n // len(seqs)):
            tokens, text, reason = self.final(seq.tokens, request.max_new_tokens)
            done.token_ids.append(tokens)
            done.texts.append(text)
            done.finish_reasons.append(reason)
        return done
