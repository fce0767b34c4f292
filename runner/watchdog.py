"""No hangs: an engine call that makes no progress for `batching.stall_timeout_s` fails, it does not wait.

Progress is the model's forward passes, counted by a PyTorch forward hook on the engine's model: every
strategy (padded batches, the continuous manager's thread) computes through it, so a hung kernel, a
dead manager thread or a deadlock shows as no forward pass while a call waits. The call runs on a
helper thread; the caller waits for it in short slices and gives up when the model has been idle for
the timeout. The stalled call's rows come back as engine errors (`error_kind: engine`, retried by
`--retry-errors`); the replica is then broken (its stuck thread cannot be stopped from Python), so
its next call ends the process and Ray restarts it (`retries.replica_restarts`) with a fresh engine
and reruns that batch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

log = logging.getLogger(__name__)


class Stalled(Exception):
    """An engine call made no progress for the stall timeout."""


class Watchdog:
    """Runs engine calls with a no-progress timeout; `beat()` is the progress signal."""

    def __init__(self, timeout_s: float | None, poll_s: float = 0.5):
        self.timeout_s = timeout_s
        self.poll_s = min(poll_s, timeout_s / 4) if timeout_s else poll_s
        self.broken = False
        self._last = time.monotonic()

    def watch_model(self, model) -> None:
        """Count the model's forward passes as progress (a forward hook; removed with the model)."""
        model.register_forward_hook(lambda *_: self.beat())

    def beat(self) -> None:
        self._last = time.monotonic()

    def call(self, fn: Callable, *args):
        """`fn(*args)`, or `Stalled` when the model made no progress for `timeout_s` meanwhile."""
        if not self.timeout_s:
            return fn(*args)
        future: Future = Future()

        def target() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # noqa: BLE001 - handed to the caller as it is
                future.set_exception(err)

        started = time.monotonic()
        threading.Thread(target=target, name="engine-call", daemon=True).start()
        while True:
            try:
                return future.result(timeout=self.poll_s)
            except FutureTimeout:
                idle = time.monotonic() - max(self._last, started)
                if idle >= self.timeout_s:
                    self.broken = True
                    raise Stalled(
                        f"engine stalled: no progress for {idle:.0f}s (batching.stall_timeout_s={self.timeout_s:g})"
                    ) from None

    def restart_if_broken(self, exit: Callable[[int], None] = os._exit) -> None:
        """A replica whose engine stalled ends its process before its next call: Ray restarts it."""
        if self.broken:
            log.error("this replica's engine stalled earlier: exiting so that Ray restarts it")
            exit(1)
