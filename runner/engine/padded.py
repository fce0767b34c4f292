"""The padded strategy: static batches, length-sorted and cut by a token budget, decoded by `DecodeLoop`.

Rows of a batch are left-padded (prefilled in groups of similar length, decoded together); the decode
loop drops every row as soon as it finishes. One batch runs on the model at a time: calls
from several threads (several Ray Data batches in flight) queue on a lock, so the next batch starts the
moment the previous one ends while its prompts were prepared concurrently.
"""

from __future__ import annotations

import threading

from runner.config import BatchingConfig, SamplingConfig
from runner.engine.batching import plan_batches
from runner.engine.decode import DecodeLoop
from runner.engine.memory import token_budget
from runner.engine.sampling import Sampler
from runner.engine.sequence import Stopper, eos_ids, expand
from runner.engine.types import Completion, Request


class PaddedGenerator:
    """Length-sorted, budget-cut static batches; finished rows leave the batch at every step."""

    def __init__(self, model, tokenizer, sampling: SamplingConfig, batching: BatchingConfig):
        self.sampling = sampling
        self.batching = batching
        self.budget = token_budget(batching, model)
        self.stopper = Stopper(tokenizer, eos_ids(tokenizer, model), sampling.stop)
        pad = tokenizer.pad_token_id
        self.loop = DecodeLoop(model, Sampler(sampling), self.stopper, pad, batching.max_padding)
        self._lock = threading.Lock()

    def plan(self, requests: list[Request]) -> list[list[Request]]:
        """The batches to run, longest prompts first (each is one unit of out-of-memory retry)."""
        samples = 1 if self.sampling.greedy else self.sampling.n
        return list(plan_batches(requests, self.budget, self.batching.max_batch_size, samples))

    def run(self, requests: list[Request]) -> list[Completion]:
        """Complete one batch (in request order)."""
        seqs = expand(requests, self.sampling)
        with self._lock:
            self.loop.run(seqs)
        return self.stopper.completions(requests, seqs, self.sampling.n)

    def close(self) -> None:
        """Nothing to release: the batch's cache lives only inside `run`."""
