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
        seed = row_params(sampling, r).seed
        seqs += [Sequence(r, j, row_key(seed, r.id, j)) for j in range(computed(r, sampling))]
    return seqs


def computed(request: Request, sampling: SamplingConfig) -> int:
    """Sequences computed for a request: its samples, or one when it is greedy (all would be equal)."""
    return 1 if row_params(sampling, request).greedy else samples(request, sampling.n)


def samples(request: Request, n: int) -> int:
    """Samples a request asks for: its own n, else the job's."""
    return request.sampling.own("n", n) if request.sampling is not None else n


def request_stops(request: Request, stops: list[str]) -> list[str]:
    """Stop strings of a request: its own, else the job's."""
    own = request.sampling.stop if request.sampling is not None else None
    return list(own) if own is not None else stops


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
        self.window = _window(stops)

    def update(self, seq: Sequence) -> bool:
        """After a token was appended: mark and return whether the sequence is now finished."""
        tokens = seq.tokens
        seq.finished = (
            tokens[-1] in self.eos
            or len(tokens) >= seq.request.max_new_tokens
            or self.has_stop(tokens, seq.request)
        )
        return seq.finished

    def has_stop(self, tokens: list[int], request: Request | None = None) -> bool:
        """Whether the text of the last tokens holds a stop string (checked after every new token);
        `request`'s own stop strings replace the job's."""
        stops = request_stops(request, self.stops) if request is not None else self.stops
        window = self.window if stops is self.stops else _window(stops)
        return bool(stops) and self._holds_stop(tokens[-window:], stops)

    def _holds_stop(self, tokens: list[int], stops: list[str]) -> bool:
        return cut_at_stop(self._text(tokens), stops)[1]

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def final(
        self, tokens: list[int], limit: int, stops: list[str] | None = None
    ) -> tuple[list[int], str, str]:
        """(tokens, text, finish reason) of a finished sample: cut at EOS, limit or stop string
        (`stops`: a request's own, else the job's)."""
        stops = self.stops if stops is None else stops
        tokens = tokens[:limit]
        reason = "length"
        eos_at = next((i for i, t in enumerate(tokens) if t in self.eos), None)
        if eos_at is not None:
            tokens, reason = tokens[:eos_at], "stop"
        text, stopped = cut_at_stop(self._text(tokens), stops)
        if stopped:
            return self._through_stop(tokens, stops), text, "stop"
        return tokens, text, reason

    def _through_stop(self, tokens: list[int], stops: list[str]) -> list[int]:
        """The shortest prefix whose text holds a stop string (binary search: holding one is monotone)."""
        low, high = 1, len(tokens)
        while low < high:
            mid = (low + high) // 2
            if self._holds_stop(tokens[:mid], stops):
                high = mid
            else:
                low = mid + 1
        return tokens[:high]

    def completions(self, requests: list[Request], seqs: list[Sequence], n: int) -> list[Completion]:
        """One Completion per request (in request order) from its finished sequences; `n`: the job's
        samples per request (a request's own n replaces it)."""
        by_request: dict[str, list[Sequence]] = {}
        for seq in seqs:
            by_request.setdefault(seq.request.id, []).append(seq)
        return [self._complete(r, by_request[r.id], samples(r, n)) for r in requests]

    def _complete(self, request: Request, seqs: list[Sequence], n: int) -> Completion:
        done = Completion(id=request.id)
        stops = request_stops(request, self.stops)
        for seq in sorted(seqs, key=lambda s: s.sample) * (n // len(seqs)):
            tokens, text, reason = self.final(seq.tokens, request.max_new_tokens, stops)
            done.token_ids.append(tokens)
            done.texts.append(text)
            done.finish_reasons.append(reason)
        return done


def _window(stops: list[str]) -> int:
    # A stop string of k characters spans at most 4 bytes each, and every token is at least one byte.
    return 4 * max((len(s) for s in stops), default=0) + 4
