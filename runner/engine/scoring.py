"""Log-likelihood scoring: context ids + continuation ids -> summed log-probability of the continuation
and whether it is the greedy continuation. The lm-evaluation-harness `loglikelihood` request, batched.

Batches are length-sorted and cut by the token budget like generation, and split on out-of-memory
(`runner.engine.memory.split_on_oom`). Padding is on the RIGHT with no attention mask and no
position ids: every real token sits at the same position, with the same tokens before it, as in an
unbatched forward pass, and pads only come after it. So any causal model computes every real token as
it would alone, whatever its attention does (sliding windows, ALiBi) or whether it has attention at
all (state-space models ignore masks). Left padding would need every architecture to honour a mask
and shifted positions, which not all do. transformers has no batched scoring API of its own, hence
this module.

Shared contexts (`batching.prefix_sharing`, for models the padded strategy runs exactly): the choices
of a multiple-choice question are continuations of one context, and the contexts of an eval often
begin with one few-shot block. Requests whose context another request has too, or whose context
begins with a prefix other contexts share (at least `batching.prefix_min_tokens`), run the context
once: contexts are prefilled left-padded, each shared prefix computed once (runner.engine.prefix),
and each continuation is scored in one more forward pass over a copy of its context's cache, with
position ids continuing from its context. The other requests keep the single right-padded pass.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from runner.config import BatchingConfig
from runner.engine.architecture import Architecture, padded_refusal
from runner.engine.forward import ModelCall
from runner.engine.kv_cache import full_cache
from runner.engine.memory import split_on_oom, token_budget
from runner.engine.prefix import PrefixStore, SharedPrefill, common_length
from runner.engine.types import Completion, Progress

log = logging.getLogger(__name__)


@dataclass
class ScoreRequest:
    """One (context, continuation) pair; the context must hold at least one token."""

    id: str
    context_ids: list[int]
    continuation_ids: list[int]

    @property
    def length(self) -> int:
        return len(self.context_ids) + len(self.continuation_ids)


@dataclass
class ScoreResult:
    """Sum of the continuation tokens' log-probabilities, and whether each was the argmax."""

    id: str
    logprob: float = float("nan")
    greedy: bool = False
    error: str | None = None


def by_context(requests: list[ScoreRequest]) -> dict[tuple[int, ...], list[ScoreRequest]]:
    """Requests grouped by their context ids, in first-seen order."""
    groups: dict[tuple[int, ...], list[ScoreRequest]] = {}
    for r in requests:
        groups.setdefault(tuple(r.context_ids), []).append(r)
    return groups


def shares_context(requests: list[ScoreRequest], min_tokens: int) -> list[bool]:
    """Per request: whether another request has its context, or a context beginning with the same
    `min_tokens` or more tokens (its last token aside)."""
    groups = by_context(requests)
    contexts = sorted(groups)
    near = {c: len(groups[c]) > 1 for c in contexts}
    for a, b in zip(contexts, contexts[1:], strict=False):
        if min(common_length(a, b), len(a) - 1, len(b) - 1) >= min_tokens:
            near[a] = near[b] = True
    return [near[tuple(r.context_ids)] for r in requests]


def plan_shared(requests: list[ScoreRequest], budget: int, max_rows: int) -> list[list[ScoreRequest]]:
    """Whole questions (requests of one context), longest context first, cut so that every
    continuation row x (longest context + longest continuation) stays within the token budget."""
    questions = sorted(by_context(requests).values(), key=lambda q: len(q[0].context_ids), reverse=True)
    batches: list[list[ScoreRequest]] = []
    for question in questions:
        current = batches[-1] if batches else None
        if current:
            rows = current + question
            width = len(current[0].context_ids) + max(len(r.continuation_ids) for r in rows)
            if len(rows) <= max_rows and len(rows) * width <= budget:
                current += question
                continue
        batches.append(list(question))
    return batches


def plan_batches(requests: list[ScoreRequest], budget: int, max_rows: int) -> list[list[ScoreRequest]]:
    """Longest first, cut so rows x longest length stays within the token budget."""
    ordered = sorted(requests, key=lambda r: r.length, reverse=True)
    batches: list[list[ScoreRequest]] = []
    for request in ordered:
        current = batches[-1] if batches else None
        # Sorted longest first: a batch's first row is its longest, so it sets the padded width.
        if current and len(current) < max_rows and (len(current) + 1) * current[0].length <= budget:
            current.append(request)
        else:
            batches.append([request])
    return batches


class LoglikelihoodScorer:
    """Scores continuations with one loaded causal LM; safe to call from several threads."""

    def __init__(self, model, batching: BatchingConfig):
        self._call = ModelCall(model)
        self.batching = batching
        self.budget = token_budget(batching, model)
        self._lock = threading.Lock()  # one forward pass at a time: concurrent callers queue
        self.sharing = self._sharing(model, batching)
        self._context_saved = 0  # context tokens continuations took from their context's cache

    @property
    def model(self):
        """The model scored with: the one its forward passes call (ModelCall owns calling it)."""
        return self._call.model

    @model.setter
    def model(self, model) -> None:
        self._call.model = model

    def _sharing(self, model, batching: BatchingConfig) -> SharedPrefill | None:
        """The shared-context prefill, where the padded layout is exact for the model (else None)."""
        if not batching.prefix_sharing:
            return None
        refusal = padded_refusal(Architecture.of(model))
        if refusal is not None:
            log.info("scoring: contexts are not shared for %s: %s", type(model).__name__, refusal)
            return None
        store = PrefixStore(model, int(self.budget * PrefixStore.BUDGET_SHARE))
        return SharedPrefill(model, self._pad_id(), batching.max_padding, batching.prefix_min_tokens, store)

    @property
    def prefix_tokens_reused(self) -> int:
        """Context tokens not computed because requests shared a context or its prefix."""
        return self._context_saved + self.sharing.tokens_saved if self.sharing is not None else 0

    def score(self, requests: list[ScoreRequest], progress: Progress | None = None) -> list[ScoreResult]:
        """Every request's result, in request order; a row that does not fit even alone is an error.
        `progress`: counts each batch's forward (the watchdog's signal)."""
        for r in requests:
            if not r.context_ids or not r.continuation_ids:
                raise ValueError(f"score request {r.id}: context and continuation need a token each")
        shared = [False] * len(requests)
        if self.sharing is not None:
            shared = shares_context(requests, self.batching.prefix_min_tokens)
        done: dict[str, ScoreResult] = {}
        rows = self.batching.max_batch_size
        plain = [r for r, s in zip(requests, shared, strict=True) if not s]
        run = lambda batch: self._run(batch, progress)  # noqa: E731
        self._collect(plan_batches(plain, self.budget, rows), run, done)
        together = [r for r, s in zip(requests, shared, strict=True) if s]
        run = lambda batch: self._run_shared(batch, progress)  # noqa: E731
        self._collect(plan_shared(together, self.budget, rows), run, done)
        return [done[r.id] for r in requests]

    @staticmethod
    def _collect(batches: list[list[ScoreRequest]], run: Callable, done: dict[str, ScoreResult]) -> None:
        for batch in batches:
            for result in split_on_oom(run, batch):
                # split_on_oom reports a row that does not fit alone as a failed Completion.
                if isinstance(result, Completion):
                    result = ScoreResult(result.id, error=result.error)
                done[result.id] = result

    @torch.inference_mode()
    def _run_shared(self, batch: list[ScoreRequest], progress: Progress | None = None) -> list[ScoreResult]:
        """Each context once (shared prefixes once), then every continuation over its context's cache."""
        questions = by_context(batch)
        contexts = [list(c) for c in questions]
        width = max(len(c) for c in contexts)
        flat = [r for q in questions.values() for r in q]
        rows = torch.tensor([i for i, q in enumerate(questions.values()) for _ in q])
        with self._lock:
            last, kv = self.sharing(contexts, width, None, self._call.counting(progress))
            rest = self._over_context(flat, rows, kv, width)
            self._context_saved += sum((len(q) - 1) * len(c) for c, q in questions.items())
        if progress is not None:
            progress.step()
        first = last.log_softmax(-1).index_select(0, rows.to(last.device))
        return [
            self._shared_result(r, first[i], rest[i] if rest is not None else None)
            for i, r in enumerate(flat)
        ]

    def _over_context(
        self, flat: list[ScoreRequest], rows: torch.Tensor, kv, width: int
    ) -> torch.Tensor | None:
        """Log-probabilities [rows, longest continuation - 1, vocab] predicting each continuation's
        tokens after its first, from one pass of the continuations (right-padded) over copies of their
        contexts' caches (left-padded to `width`)."""
        length = max(len(r.continuation_ids) for r in flat) - 1
        if length == 0:  # every continuation is one token: the contexts' last logits score them all
            return None
        device = self.model.device
        cache = full_cache(self.model.config)
        for layer, (keys, values) in zip(cache.layers, kv, strict=True):
            layer.update(
                keys.index_select(0, rows.to(keys.device)), values.index_select(0, rows.to(keys.device))
            )
        ids = torch.full((len(flat), length), self._pad_id(), dtype=torch.long)
        mask = torch.zeros((len(flat), width + length), dtype=torch.long)
        for i, r in enumerate(flat):
            tail = r.continuation_ids[:-1]
            ids[i, : len(tail)] = torch.tensor(tail, dtype=torch.long)
            mask[i, width - len(r.context_ids) :] = 1  # pads after a short continuation: never read
        starts = torch.tensor([len(r.context_ids) for r in flat])
        positions = starts[:, None] + torch.arange(length)[None]
        logits = self._call.logits(ids.to(device), mask.to(device), positions.to(device), cache)
        return logits.float().log_softmax(-1)

    @staticmethod
    def _shared_result(r: ScoreRequest, first: torch.Tensor, rest: torch.Tensor | None) -> ScoreResult:
        """`first`: log-probabilities after the context; `rest`: after each continuation token."""
        rows = first[None] if rest is None else torch.cat([first[None], rest[: len(r.continuation_ids) - 1]])
        target = torch.tensor(r.continuation_ids, device=rows.device)
        logprob = rows.gather(-1, target[:, None]).sum().item()
        greedy = bool((rows.argmax(-1) == target).all().item())
        return ScoreResult(r.id, logprob=logprob, greedy=greedy)

    @torch.inference_mode()
    def _run(self, batch: list[ScoreRequest], progress: Progress | None = None) -> list[ScoreResult]:
        width = max(r.length for r in batch)
        # The last position predicts nothing we need; the first needed one is the shortest context's end.
        first = min(len(r.context_ids) for r in batch) - 1
        ids = torch.full((len(batch), width - 1), self._pad_id(), dtype=torch.long)
        for i, r in enumerate(batch):
            row = (r.context_ids + r.continuation_ids)[:-1]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        with self._lock:
            logits = self._call.logits(ids.to(self.model.device), keep=width - 1 - first)
        if progress is not None:
            progress.step()
        offset = first if self._call.keeps else 0
        return [self._result(r, logits[i], offset) for i, r in enumerate(batch)]

    @staticmethod
    def _result(r: ScoreRequest, logits: torch.Tensor, offset: int) -> ScoreResult:
        start = len(r.context_ids) - 1 - offset  # the logits at position p predict token p + 1
        rows = logits[start : start + len(r.continuation_ids)].float().log_softmax(-1)
        target = torch.tensor(r.continuation_ids, device=rows.device)
        logprob = rows.gather(-1, target[:, None]).sum().item()
        greedy = bool((rows.argmax(-1) == target).all().item())
        return ScoreResult(r.id, logprob=logprob, greedy=greedy)

    def _pad_id(self) -> int:
        # Pads come after every real token and are never read; any valid id will do.
        pad = getattr(self.model.config, "pad_token_id", None)
        return pad if isinstance(pad, int) else 0
