"""The continuous strategy: transformers' continuous batching, kept running for the engine's lifetime.

Prompts are packed into one token stream (no padding) over a paged KV cache; at every step finished
rows leave and waiting rows join. The work is done by transformers' `ContinuousBatchingManager`, which
runs its own generation thread; this module adds what it lacks for a batch job:

- one persistent manager per engine, fed by every caller: several Ray Data batches in flight on a
  replica all land in the same running batch, so the device never idles between them;
- each request's own `max_new_tokens` and EOS ids, and stop strings (streamed, then cancelled);
- sampling reproducible per row: a logits processor adds keyed Gumbel noise (runner.engine.sampling)
  after transformers' per-request temperature / top-k / top-p warpers, and the manager takes the argmax;
- per-sequence attention where transformers' own paged path is not exact (runner.engine.paged_attention);
- shared prompt prefixes computed once (`batching.prefix_sharing`): transformers' block sharing
  (`allow_block_sharing`) gives a request the cached KV pages of an earlier request's identical
  prompt start (whole pages: 64 tokens on CPU); the tokens it saved are counted. transformers shares
  blocks only for full-attention models: one with sliding-window layers runs unshared (logged);
- an out-of-memory failure of the generation thread is raised to the caller (who splits the batch)
  and the manager is restarted;
- no hang when a library changes: every request is streamed, so each call sees its own progress
  (runner.engine.watchdog), and a generation thread that keeps dying or a router that dies fails every waiting
  call at once with the error's first line (`_fail`), which the engine's start-up probe turns into a
  refusal at start.
The manager is used through its public API (`init_continuous_batching`, `start`, `add_request`,
`get_result`, `cancel_request`, `stop`); what it only exposes privately goes through runner.compat.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from runner import compat
from runner.config import BatchingConfig, SamplingConfig
from runner.engine import paged_attention
from runner.engine.architecture import Architecture
from runner.engine.memory import split_on_oom, token_budget
from runner.engine.processors import row_kwargs, sampling_processors
from runner.engine.routing import needs_padded, split_run
from runner.engine.sequence import Sequence, Stopper, eos_ids, expand
from runner.engine.types import Completion, Request
from runner.errors import first_line

log = logging.getLogger(__name__)

CPU_PAGE_SIZE = 64
# Generators not closed yet. Their threads are daemons (an engine nobody closes must not keep its
# process alive), but a daemon thread still inside torch while the interpreter tears torch down aborts
# the process: they are stopped at exit, before that teardown.
_LIVE: weakref.WeakSet = weakref.WeakSet()

# Tokens per forward on CPU: enough to fill the cores, few enough that decode steps are not held up long.
CPU_STEP_TOKENS = 512


@dataclass
class _Call:
    """One `run` call waiting for its sequences."""

    remaining: int
    done: threading.Event = field(default_factory=threading.Event)
    errors: dict[str, str] = field(default_factory=dict)
    out_of_memory: str | None = None
    failure: str | None = None  # the generator broke: the whole call fails with this

    def fail(self, reason: str) -> None:
        self.failure = reason
        self.done.set()

    def finish(self, seq: Sequence, error: str | None) -> None:
        if error and "out of memory" in error.lower():
            self.out_of_memory = error
        elif error:
            self.errors[seq.request.id] = error
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()


def cb_config(model, batching: BatchingConfig):
    """transformers' ContinuousBatchingConfig for this device: CUDA sizes itself from free memory."""
    from transformers import ContinuousBatchingConfig

    kwargs = {
        "max_requests_per_batch": batching.max_batch_size,
        "max_memory_percent": batching.memory_fraction,
        # runner.engine.loading already picked FA2 where it can run; never switch a model it kept off FA2.
        "auto_switch_to_flash": False,
        "allow_block_sharing": batching.prefix_sharing,
    }
    if model.device.type != "cuda":
        kwargs |= {"page_size": CPU_PAGE_SIZE, "max_batch_tokens": CPU_STEP_TOKENS}
    if model.device.type != "cuda" or batching.token_budget is not None:
        # As a padded batch always runs a lone oversized row, the cache always holds one full-context row.
        context = getattr(model.config, "max_position_embeddings", None) or 0
        kwargs["num_blocks"] = max(token_budget(batching, model), context) // kwargs.get("page_size", 256) + 1
    return ContinuousBatchingConfig(**kwargs)


def build_manager(model, tokenizer, sampling: SamplingConfig, batching: BatchingConfig):
    """A started continuous batching manager (transformers' public entry point,
    `model.init_continuous_batching`) with our sampling processors."""
    from transformers import GenerationConfig

    if "flash" not in compat.attn_implementation(model):
        paged_attention.install()
    compat.count_prefix_matches()
    generation = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=tokenizer.pad_token_id)
    manager = model.init_continuous_batching(
        generation_config=generation, continuous_batching_config=cb_config(model, batching)
    )
    if not sampling.greedy:
        compat.set_manager_processors(manager, sampling_processors(sampling))
    start_daemon(manager)
    return manager


def start_daemon(manager) -> None:
    """`manager.start()`, from a daemon thread: a thread inherits its starter's daemon flag, so the
    generation thread is a daemon too (an engine nobody closes must not keep its process alive).
    Torch's CPU thread count is process-wide (set_num_threads): the new thread computes with it."""
    starter = threading.Thread(target=manager.start, name="continuous-start", daemon=True)
    starter.start()
    starter.join()


_SERIALISED: weakref.WeakSet = weakref.WeakSet()


def serialise_forwards(model) -> None:
    """One forward at a time on `model`: the manager's thread shares it with the padded fallback
    (grammar / penalty rows), the scorer (an eval's choice tasks) and the logprobs pass.

    Measured on transformers 5.24.0 (not 5.23.0): while the manager computed, a padded forward on the
    same model in another thread drew other tokens for the same row in about 1 run of 3
    (tests/test_generation_features.py test_a_sampled_row_in_a_greedy_job); serialised, 0 of 6. On CPU
    two concurrent forwards only share the cores anyway. A CUDA-graph replay of the manager skips
    module hooks and so this lock (continuous on GPU with grammar rows: not measured here)."""
    if model in _SERIALISED:
        return
    _SERIALISED.add(model)
    lock = threading.Lock()

    def acquire(*_) -> None:  # a pre-hook that returns a value replaces the forward's arguments
        lock.acquire()

    model.register_forward_pre_hook(acquire)
    model.register_forward_hook(lambda *_: lock.release(), always_call=True)


class ContinuousGenerator:
    """Feeds requests from any number of threads into one running continuous batching manager."""

    def __init__(self, model, tokenizer, sampling: SamplingConfig, batching: BatchingConfig):
        self.sampling = sampling
        self.eos = sorted(eos_ids(tokenizer, model, sampling)) or [-1]
        self.stopper = Stopper(tokenizer, set(self.eos) - {-1}, sampling.stop)
        serialise_forwards(model)
        self.manager = build_manager(model, tokenizer, sampling, batching)
        self._matched_before = 0  # prefix tokens matched by the caches of managers restarted since
        if batching.prefix_sharing and "sliding_attention" in Architecture.of(model).layer_types:
            log.info(
                "continuous: no prefix sharing for %s: transformers shares KV blocks of full-attention "
                "models only, and this one has sliding-window layers",
                type(model).__name__,
            )
        self._fallback, self._fallback_args = None, (model, tokenizer, sampling, batching)
        self._pending: dict[str, tuple[Sequence, _Call]] = {}
        self._lock = threading.Lock()
        self._restart_lock = threading.Lock()
        self._ids = itertools.count()
        self._closed = False
        self._failure: str | None = None  # set once the generator is broken for good (`_fail`)
        self._restarts: deque[float] = deque(maxlen=3)  # recent restarts with no output since
        self._router = threading.Thread(target=self._route, name="continuous-router", daemon=True)
        self._router.start()
        _LIVE.add(self)

    def announce(self) -> AbstractContextManager:
        """Nothing to wait for: requests join the running batch whenever they come."""
        return nullcontext()

    def generate(self, requests: list[Request]) -> list[Completion]:
        """All at once: the manager schedules, packs and refills by itself (out of memory: split).
        Rows that need per-row host state (grammar, penalties) run in a padded generator: see routing."""
        if not requests:
            return []
        keys = compat.processor_keys(self.manager)
        return split_run(
            requests,
            lambda r: needs_padded(r, self.sampling, keys),
            lambda rows: split_on_oom(self.run, rows),
            lambda rows: self._padded().generate(rows),
        )

    @property
    def prefix_tokens_reused(self) -> int:
        """Prompt tokens not computed because a request's prompt began with cached blocks of another's
        (and those of rows run by the padded fallback)."""
        fallback = self._fallback.prefix_tokens_reused if self._fallback is not None else 0
        return self._matched_before + compat.prefix_tokens_matched(self.manager) + fallback

    def _padded(self):
        with self._lock:
            if self._fallback is None:
                from runner.engine.padded import PaddedGenerator

                self._fallback = PaddedGenerator(*self._fallback_args)
            return self._fallback

    def run(self, requests: list[Request]) -> list[Completion]:
        """Complete requests (in request order); raises OutOfMemoryError if the device ran out, and
        EngineFailed at once when the generator is broken (its threads died: see `_fail`)."""
        seqs = expand(requests, self.sampling)
        call = _Call(remaining=len(seqs))
        for seq in seqs:
            self._submit(seq, call)
        call.done.wait()
        if call.out_of_memory:
            raise torch.OutOfMemoryError(call.out_of_memory)
        if call.failure:
            raise EngineFailed(call.failure)
        done = self.stopper.completions(requests, seqs, self.sampling.n)
        return [Completion.failed(c.id, call.errors[c.id]) if c.id in call.errors else c for c in done]

    def close(self, hard: bool = False) -> None:
        """Stop the generation thread (after its work, or at once when hard) and release the KV cache."""
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        if self.manager.is_running():
            self._wait_until_started()
            self.manager.stop(block=True, timeout=30, hard_stop=hard)
        self.manager.destroy()
        self._router.join(timeout=5)

    def _wait_until_started(self, timeout: float = 30) -> None:
        # A thread stopped before it built its batch processor (the KV cache) would do so after the stop.
        deadline = time.monotonic() + timeout
        while (
            not compat.manager_cache_built(self.manager)
            and self.manager.is_running()
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)

    def _submit(self, seq: Sequence, call: _Call) -> None:
        request_id = str(next(self._ids))
        with self._lock:
            if self._failure is not None:
                call.fail(self._failure)
                return
            self._pending[request_id] = (seq, call)
        while self._failure is None and self._add(request_id, seq) is None:
            self._restart()  # the manager stopped taking requests: it failed and is shutting down

    def _add(self, request_id: str, seq: Sequence) -> str | None:
        extra = {} if self.sampling.greedy else row_kwargs(self.sampling, seq)
        # Streamed: an output per step per request is each call's progress (runner.engine.types.Progress),
        # and what stop strings are checked on.
        return self.manager.add_request(
            seq.request.prompt_ids,
            request_id=request_id,
            max_new_tokens=seq.request.max_new_tokens,
            eos_token_id=self.eos,
            streaming=True,
            **extra,
        )

    def _restart(self) -> None:
        with self._restart_lock:
            if self._failure is not None or compat.manager_accepting(self.manager):
                return  # failed for good, or another caller restarted it already
            failure = compat.manager_failure(self.manager) or _thread_error(self.manager)
            if len(self._restarts) == self._restarts.maxlen and time.monotonic() - self._restarts[0] < 60:
                self._fail(f"continuous batching keeps failing ({failure or 'no error recorded'})")
                return
            self._restarts.append(time.monotonic())
            log.warning("continuous batching manager stopped (%s): restarting it", failure)
            thread = compat.manager_thread(self.manager)
            if thread is not None:
                thread.join(timeout=60)
            self._matched_before += compat.prefix_tokens_matched(self.manager)
            start_daemon(self.manager)

    def _fail(self, reason: str) -> None:
        """Broken for good: every waiting call fails now with `reason`, and so does every later one."""
        reason = f"{reason} [{compat.versions_line('transformers', 'torch')}]"
        log.error("continuous strategy failed: %s", reason)
        with self._lock:
            self._failure = reason
            pending, self._pending = self._pending, {}
        for _seq, call in pending.values():
            call.fail(reason)

    def _route(self) -> None:
        """Hand every output of the manager to the sequence it belongs to (runs in its own thread);
        should it die, every waiting call fails with its error instead of waiting for the watchdog."""
        try:
            while not self._closed and self._failure is None:
                output = self.manager.get_result(timeout=0.1)
                if output is None:
                    self._revive()
                    continue
                self._restarts.clear()  # the manager works: earlier failures were not a broken library
                with self._lock:
                    entry = self._pending.get(output.request_id)
                if entry is not None:
                    self._update(output, *entry)
        except BaseException as err:  # noqa: BLE001 - any death of this thread fails its callers at once
            self._fail(f"continuous router thread died: {type(err).__name__}: {first_line(err)}")

    def _revive(self) -> None:
        # A request added while the manager was failing can sit in its queue with nobody to restart it.
        if self._pending and not self.manager.is_running() and not self._closed:
            self._restart()
        time.sleep(0.01)

    def _update(self, output, seq: Sequence, call: _Call) -> None:
        seq.tokens = list(output.generated_tokens)
        if seq.request.progress is not None:
            seq.request.progress.step()
        if output.error is not None or output.is_finished():
            self._finish(output.request_id, seq, call, output.error)
        elif self.stopper.has_stop(seq.tokens, seq.request):
            self.manager.cancel_request(output.request_id)
            self._finish(output.request_id, seq, call, None)

    def _finish(self, request_id: str, seq: Sequence, call: _Call, error: str | None) -> None:
        with self._lock:
            if self._pending.pop(request_id, None) is None:
                return  # already failed with the whole generator
        seq.finished = True
        call.finish(seq, error)


class EngineFailed(RuntimeError):
    """The continuous strategy's threads died: no request can complete on this generator."""


# Exceptions that ended threads of this process, by thread: a generation thread that dies of an
# exception transformers does not catch leaves no fatal error on the manager, only this.
_THREAD_ERRORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_previous_hook = threading.excepthook


def _record_thread_error(args) -> None:
    if args.thread is not None and args.exc_value is not None:
        _THREAD_ERRORS[args.thread] = f"{args.exc_type.__name__}: {first_line(args.exc_value)}"
    _previous_hook(args)


threading.excepthook = _record_thread_error


def _thread_error(manager) -> str | None:
    thread = compat.manager_thread(manager)
    return _THREAD_ERRORS.get(thread) if thread is not None else None


@atexit.register
def _close_live_generators() -> None:
    for generator in list(_LIVE):
        generator.close(hard=True)
