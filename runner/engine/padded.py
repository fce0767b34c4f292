"""The padded strategy: static batches, length-sorted and cut by a token budget, decoded by `DecodeLoop`.

Rows of a batch are left-padded (prefilled in groups of similar length, decoded together); the decode
loop drops every row as soon as it finishes. One batch runs on the model at a time.

Several callers at once (a replica with several Ray Data batches in flight) share one pool of waiting
rows: each batch is planned over the rows of every caller, so rows of similar length from different
Ray Data batches run together instead of each caller sorting only its own few. Ray Data LLM keeps its
engine busy with `max_concurrent_batches` but leaves the merging to vLLM's scheduler; transformers'
`generate` has no scheduler, so the padded strategy needs this one (`continuous` merges in
transformers' manager). Measured on the CPU benchmark's Ray job (4 batches of 28 rows in flight),
back to back: 48.4 s with one sorted plan per caller, 37.6 s merged.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from runner.config import BatchingConfig, SamplingConfig
from runner.engine import adapters
from runner.engine.batching import plan_batches
from runner.engine.decode import DecodeLoop
from runner.engine.layouts import PlainLayout, SharedLayout
from runner.engine.memory import split_on_oom, token_budget
from runner.engine.prefix import PrefixStore, SharedPrefill
from runner.engine.processors import RowProcessors
from runner.engine.sampling import Sampler
from runner.engine.sequence import Stopper, computed, eos_ids, expand
from runner.engine.types import Completion, Request

# The first caller to find the engine idle waits, at most this long, for callers that announced rows
# (a replica's other in-flight Ray Data batches, still tokenizing) before the first batch is planned:
# a batch planned over one caller's few rows mixes every prompt length, and a 20-token row decoding
# beside a 1,000-token one pays for attention over the long row's padded cache. Callers arrive a tokenization apart (~0.4 s for 28
# long prompts on the CPU benchmark). Ray Serve's `@serve.batch` has the same knob
# (`batch_wait_timeout_s`); here it only applies when the engine was idle.
GATHER_S = 1.0


@dataclass(eq=False)
class _Call:
    """One `generate` call: its rows not yet run, and the results of those that ran."""

    requests: list[Request]
    waiting: list[Request] = field(init=False)  # not yet taken into a batch
    done: dict[int, Completion] = field(init=False, default_factory=dict)  # by position in `requests`
    error: BaseException | None = field(init=False, default=None)
    _position: dict[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Rows are told apart by identity: own copies, so a request object passed twice stays two rows.
        self.requests = [copy.copy(r) for r in self.requests]
        self.waiting = list(self.requests)
        self._position = {id(r): i for i, r in enumerate(self.requests)}

    @property
    def finished(self) -> bool:
        return self.error is not None or len(self.done) == len(self.requests)

    def owns(self, request: Request) -> bool:
        return id(request) in self._position

    def record(self, request: Request, completion: Completion) -> None:
        self.done[self._position[id(request)]] = completion


class PaddedGenerator:
    """Length-sorted, budget-cut static batches; finished rows leave the batch at every step."""

    def __init__(self, model, tokenizer, sampling: SamplingConfig, batching: BatchingConfig):
        self.sampling = sampling
        self.batching = batching
        self.budget = token_budget(batching, model)
        self.stopper = Stopper(tokenizer, eos_ids(tokenizer, model, sampling), sampling.stop)
        pad = tokenizer.pad_token_id
        sampler = Sampler(sampling, RowProcessors(sampling, tokenizer, self.stopper.eos, model))
        self.layout = self._layout(model, pad)
        self.loop = DecodeLoop(model, sampler, self.stopper, self.layout)
        self._calls: list[_Call] = []  # oldest first
        self._state = threading.Condition()
        self._busy = False  # a thread is running a batch on the model
        self._announced = 0  # callers preparing or running a call (see `announce`)

    def _layout(self, model, pad: int) -> PlainLayout | SharedLayout:
        """The cache layout of every batch (runner.engine.layouts)."""
        batching = self.batching
        if not batching.prefix_sharing:
            return PlainLayout(model, pad, batching.max_padding)
        store = PrefixStore(model, int(self.budget * PrefixStore.BUDGET_SHARE))
        prefill = SharedPrefill(model, pad, batching.max_padding, batching.prefix_min_tokens, store)
        return SharedLayout(model, pad, batching.max_padding, prefill)

    def plan(self, requests: list[Request]) -> list[list[Request]]:
        """The batches to run, longest prompts first (each is one unit of out-of-memory retry)."""
        samples = max((computed(r, self.sampling) for r in requests), default=1)  # a row's own n counts
        groups = adapters.groups(requests)  # a batch runs one adapter (runner.engine.adapters)
        return [
            b for g in groups for b in plan_batches(g, self.budget, self.batching.max_batch_size, samples)
        ]

    @contextmanager
    def announce(self) -> Iterator[None]:
        """Wrap the preparation (tokenizing) and `generate` of a caller's rows, so that a batch planned
        meanwhile waits for them (at most GATHER_S) instead of running with whoever came first."""
        with self._state:
            self._announced += 1
        try:
            yield
        finally:
            with self._state:
                self._announced -= 1
                self._state.notify_all()

    def generate(self, requests: list[Request]) -> list[Completion]:
        """Complete every request (in request order), batched with the rows of concurrent callers.

        Whichever waiting caller finds the model free runs the next batch, for every caller whose rows
        are in it; a batch that fails fails the calls it held rows of, and no other.
        """
        call = _Call(requests)
        with self._state:
            self._calls.append(call)
            self._state.notify_all()  # a caller gathering the in-flight batches counts this one
            gather = not self._busy
        try:
            while True:
                with self._state:
                    self._state.wait_for(lambda: call.finished or not self._busy)
                    if call.finished:
                        break
                    self._busy = True
                    if gather:  # the engine was idle: let the announced callers' rows arrive first
                        self._state.wait_for(lambda: len(self._calls) >= self._announced, GATHER_S)
                        gather = False
                    batch, owners = self._next_batch()
                self._run_shared(batch, owners)
        finally:
            with self._state:
                self._calls.remove(call)
        if call.error is not None:
            raise call.error
        return [call.done[i] for i in range(len(requests))]

    def _next_batch(self) -> tuple[list[Request], list[_Call]]:
        """The planned batch holding the oldest call's next rows (so calls finish in turn), filled with
        rows of similar length from any call; and the call each row belongs to. Holds the state lock."""
        oldest = next(c for c in self._calls if c.waiting)
        pool = [r for c in self._calls for r in c.waiting]
        batch = next(b for b in self.plan(pool) if any(oldest.owns(r) for r in b))
        owners = [next(c for c in self._calls if c.owns(r)) for r in batch]
        taken = {id(r) for r in batch}
        for c in set(owners):
            c.waiting = [r for r in c.waiting if id(r) not in taken]
        return batch, owners

    def _run_shared(self, batch: list[Request], owners: list[_Call]) -> None:
        done, failure = None, None
        try:
            done = split_on_oom(self.run, batch)
        except BaseException as err:  # noqa: BLE001 - handed to the calls whose rows these were
            failure = err
        with self._state:
            if failure is None:
                for owner, request, completion in zip(owners, batch, done, strict=True):
                    owner.record(request, completion)
            else:
                for owner in set(owners):
                    owner.error = failure
            self._busy = False
            self._state.notify_all()
        if failure is not None and not isinstance(failure, Exception):
            raise failure  # KeyboardInterrupt / SystemExit also stop the thread that ran the batch

    def run(self, requests: list[Request]) -> list[Completion]:
        """Complete one batch (in request order) on the model."""
        seqs = expand(requests, self.sampling)
        with adapters.active(self.loop.model, requests[0].adapter):
            self.loop.run(seqs)
        return self.stopper.completions(requests, seqs, self.sampling.n)

    @property
    def prefix_tokens_reused(self) -> int:
        """Prompt tokens not computed because their rows shared a prefix (runner.engine.prefix)."""
        return self.layout.tokens_saved

    def close(self) -> None:
        """Nothing to release: the batch's cache lives only inside `run` (and the prefix store)."""
