"""Ctrl-C and SIGTERM stop a job cleanly: committed output stays, the rerun resumes.

A signal raises `Interrupted` in the main thread at once, so a driver blocked waiting on Ray stops
promptly; but never while output is being committed (`hold`), where an exception between writing a
part and recording it could make the writer commit the same rows twice. There it is delivered as
soon as the commit is done. Only the first signal raises: the stop path (commit what is complete,
write the summary, release the lease) runs to its end under a second Ctrl-C or a scheduler's repeated
SIGTERM, so a job never ends with its summary still saying "running".

A local Ray started by the runner lives in process groups of its own (runner.compat.own_process_groups),
so a signal to the driver's process group (`kill -- -PGID`, a shell) reaches the driver alone, which
stops and then shuts Ray down. A signal to every process of the job (systemd's control-group kill,
Slurm ending a step) kills that Ray at the same moment, and any later call into it can block until
Ray's own timeout (a minute): so the stop path bounds its Ray calls, and once the output is final the
CLI exits within seconds (`exit_within`) even if Ray's shutdown hangs.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
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
    """While entered, SIGINT and SIGTERM raise `Interrupted` (deferred inside `hold()`); `received` is
    the first signal, once one came. Later signals are logged and change nothing."""

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}
        self._held = 0  # `hold` blocks entered and not left (they nest)
        self._pending: int | None = None
        self.received: int | None = None

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
        """Defer a signal until the outermost hold ends (used around committing output)."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            if not self._held and self._pending is not None:
                signum, self._pending = self._pending, None
                raise Interrupted(signum)

    def check(self) -> None:
        """Raise `Interrupted` if a signal came: for the points a run passes outside `hold`, since the
        exception a handler raises is lost where Python runs the handler inside a callback whose
        exceptions it ignores (seen: a SIGTERM landing while `subprocess` forked one of Ray's
        processes ran the handler in logging's after-fork hook, "Exception ignored in
        `_releaseLock`", and the job went on)."""
        if self.received is not None and not self._held:
            raise Interrupted(self.received)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            log.warning("received %s again: already stopping (committing what is complete)", name)
            return
        log.warning("received %s: stopping", name)
        self.received = signum
        if self._held:
            self._pending = signum
            return
        raise Interrupted(signum)


def exit_within(code: int, seconds: float) -> None:
    """End the process with `code` after `seconds` unless it ended by then, and ignore further stop
    signals: for a stopped job whose output, summary and lease are final, so that a hung shutdown of
    a dead Ray (the scheduler signalled its processes too) or a later signal cannot hold the exit or
    change its code."""

    def force() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()
    # The output is final and the process is on its way out: a further Ctrl-C or SIGTERM (a second
    # press, a scheduler's repeat) must not interrupt Ray's shutdown at interpreter exit, which then
    # crashed the process (SIGSEGV) instead of exiting with `code`; the timer bounds the wait anyway.
    if threading.current_thread() is threading.main_thread():
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
