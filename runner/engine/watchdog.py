"""No hangs: an engine call that makes no progress for `batching.stall_timeout_s` fails, it does not wait.

Progress is counted per call by the engine itself (runner.engine.types.Progress): a prefill or decode
step that advanced one of the call's rows, a step of `model.generate`, a scoring batch. Not a forward
hook: CUDA-graph replays skip hooks (a healthy call would look stalled), and a replica-wide count
cannot see one lost call among busy ones. The call runs on a helper thread; the caller waits for it in
short slices and gives up when its own progress has not moved for the timeout. The stalled call's rows
come back as engine errors (`error_kind: engine`, retried by `--retry-errors`); the replica is then
broken (its stuck thread cannot be stopped from Python), so its next call ends the process and Ray
restarts it (`retries.replica_restarts`) with a fresh engine and reruns that batch. The engine's
start-up probe runs under the same rule (runner.engine.strategy).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from runner.engine.types import Progress

log = logging.getLogger(__name__)


class Stalled(Exception):
    """An engine call made no progress for the stall timeout."""


class Watchdog:
    """Runs engine calls with a no-progress timeout, each call with its own `Progress`."""

    def __init__(self, timeout_s: float | None, poll_s: float = 0.5):
        self.timeout_s = timeout_s
        self.poll_s = min(poll_s, timeout_s / 4) if timeout_s else poll_s
        self.broken = False

    def call(self, fn: Callable[[Progress], object]):
        """`fn(progress)`, or `Stalled` when `progress` did not move for `timeout_s` meanwhile."""
        progress = Progress()
        if not self.timeout_s:
            return fn(progress)
        future: Future = Future()

        def target() -> None:
            try:
                future.set_result(fn(progress))
            except BaseException as err:  # noqa: BLE001 - handed to the caller as it is
                future.set_exception(err)

        threading.Thread(target=target, name="engine-call", daemon=True).start()
        while True:
            try:
                return future.result(timeout=self.poll_s)
            except FutureTimeout:
                idle = time.monotonic() - progress.last
                if idle >= self.timeout_s:
                    self.broken = True
                    raise Stalled(
                        f"engine stalled: no progress for {idle:.0f}s after {progress.steps} step(s) "
                        f"(batching.stall_timeout_s={self.timeout_s:g})"
                    ) from None

    def restart_if_broken(self, exit: Callable[[int], None] = os._exit) -> None:
        """A replica whose engine stalled ends its process before its next call: Ray restarts it."""
        if self.broken:
            log.error("this replica's engine stalled earlier: exiting so that Ray restarts it")
            exit(1)
