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
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from runner.config import BatchingConfig
from runner.engine.architecture import forward_takes
from runner.engine.memory import split_on_oom, token_budget
from runner.engine.types import Completion, Progress


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
        self.model = model
        self.batching = batching
        self.budget = token_budget(batching, model)
        self._lock = threading.Lock()  # one forward pass at a time: concurrent callers queue
        self._keep = forward_takes(model, "logits_to_keep")

    def score(self, requests: list[ScoreRequest], progress: Progress | None = None) -> list[ScoreResult]:
        """Every request's result, in request order; a row that does not fit even alone is an error.
        `progress`: counts each batch's forward (the watchdog's signal)."""
        for r in requests:
            if not r.context_ids or not r.continuation_ids:
                raise ValueError(f"score request {r.id}: context and continuation need a token each")
        done: dict[str, ScoreResult] = {}
        for batch in plan_batches(requests, self.budget, self.batching.max_batch_size):
            for result in split_on_oom(lambda rows: self._run(rows, progress), batch):
                # split_on_oom reports a row that does not fit alone as a failed Completion.
                if isinstance(result, Completion):
                    result = ScoreResult(result.id, error=result.error)
                done[result.id] = result
        return [done[r.id] for r in requests]

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
            # An int (keep the last K positions) means the same to every model that takes it; an index
            # tensor would be read as negative offsets by models that only expect an int.
            kwargs = {"logits_to_keep": width - 1 - first} if self._keep else {}
            logits = self.model(input_ids=ids.to(self.model.device), use_cache=False, **kwargs).logits
        if progress is not None:
            progress.step()
        offset = first if self._keep else 0
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
