"""Ctrl-C and SIGTERM stop a job cleanly: committed output stays, the rerun resumes.

A signal raises `Interrupted` in the main thread at once, so a driver blocked waiting on Ray stops
promptly; but never while output is being committed (`hold`), where an exception between writing a
part and recording it could make the writer commit the same rows twice. There it is delivered as
soon as the commit is done.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The job was stopped by a signal; `exit_code` is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignals:
    """While entered, SIGINT and SIGTERM raise `Interrupted` (deferred inside `hold()`)."""

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}
        self._holding = False
        self._pending: int | None = None

    def __enter__(self) -> StopSignals:
        # Handlers can only be set from the main thread; elsewhere the caller's handling stays.
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in _SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Defer a signal until the block ends (used around committing output)."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            if self._pending is not None:
                signum, self._pending = self._pending, None
                raise Interrupted(signum)

    def _handle(self, signum: int, frame) -> None:
        log.warning("received %s: stopping", signal.Signals(signum).name)
        if self._holding:
            self._pending = signum
            return
        raise Interrupted(signum)
