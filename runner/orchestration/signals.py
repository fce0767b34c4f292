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
REDELIVER_S = 0.05  # after an `Interrupted` was dropped, when its signal is sent again


class Interrupted(KeyboardInterrupt):
    """The job was stopped by a signal; `exit_code` is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignals:
    """While entered, SIGINT and SIGTERM raise `Interrupted` (deferred inside `hold()`); `received` is
    the first signal, once one came. Later signals are logged and change nothing.

    Python runs a signal's handler wherever the main thread is, also in a finalizer, a weakref callback
    or a fork's after-fork hook, where it prints an exception and drops it ("Exception ignored in
    ..."): an `Interrupted` dropped there is raised again (`sys.unraisablehook`: the signal is sent to
    the main thread again), and `check()` raises a received signal at the points a run passes."""

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}
        self._previous_hook = None
        self._held = 0  # `hold` blocks entered and not left (they nest)
        self._pending: int | None = None
        self._dropped = False  # the first signal's `Interrupted` was dropped: raise it again
        self._lock = threading.Lock()
        self.received: int | None = None

    def __enter__(self) -> StopSignals:
        # Handlers can only be set from the main thread; elsewhere the caller's handling stays.
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in _SIGNALS}
            self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:  # not while `_signal_again` sends the signal
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            if self._previous_hook is not None:
                sys.unraisablehook, self._previous_hook = self._previous_hook, None

    def _unraisable(self, unraisable) -> None:
        if isinstance(unraisable.exc_value, Interrupted) and unraisable.exc_value.signum == self.received:
            log.debug(
                "the stop was raised where Python drops exceptions (%s): raising it again", unraisable.object
            )
            self._dropped = True
            # Not from here: the handler would run at once, inside this hook, and be dropped again.
            again = threading.Timer(REDELIVER_S, self._signal_again)
            again.daemon = True
            again.start()
            return
        self._previous_hook(unraisable)

    def _signal_again(self) -> None:
        with self._lock:
            if self._dropped and self._previous_hook is not None:  # still entered, not raised since
                signal.pthread_kill(threading.main_thread().ident, self.received)

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
        if self._dropped:
            self._dropped = False
            signum = self.received
        elif self.received is not None:
            log.warning("received %s again: already stopping (committing what is complete)", name)
            return
        else:
            log.warning("received %s: stopping", name)
            self.received = signum
        if self._held:
            self._pending = signum
            return
        raise Interrupted(signum)


_at_once = False  # `exit_within` ends the process at once (`exit_at_once`)


def exit_at_once() -> None:
    """Have `exit_within` end the process at once: for a process whose own exit cannot be trusted (a
    signal that interrupted `ray.init` can leave Ray's core worker half made, and its exit handler then
    crashes the process)."""
    global _at_once
    _at_once = True


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
    if _at_once:
        force()
