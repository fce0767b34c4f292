"""Quiet by default: the terminal shows the progress bar, the runner's own log lines and the summary.

Everything else a run produces (Ray's INFO lines and its token-authentication notice, the C++
`core_worker` messages Ray's core writes straight to file descriptor 2, Ray's worker processes that
inherit it, deprecation and other Python warnings) goes to a log file, whose path is the first line
a run logs; `--verbose` shows it all on the terminal as well. Descriptor 2 is redirected only when
`sys.stderr` is the process's own: an application (or a test) that replaced it keeps its streams.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from typing import TextIO

OWN_LOGGERS = ("runner", "jobs")
_FORMAT = "%(levelname)s %(name)s: %(message)s"
_terminal: TextIO | None = None
_path: str | None = None
_verbose = False


def terminal() -> TextIO:
    """Where the runner's own output for the user goes (progress bar, errors): the real terminal."""
    return _terminal or sys.stderr


class _Own(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in OWN_LOGGERS


def log_path() -> str:
    folder = os.environ.get("RUNNER_LOG_DIR") or os.path.join(tempfile.gettempdir(), "runner-logs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"runner-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")


def setup(verbose: bool = False, debug: bool = False) -> str:
    """Configure logging for one CLI command; return the log file's path."""
    global _terminal, _path, _verbose
    path = _path = log_path()
    _verbose = verbose
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s " + _FORMAT))
    _terminal = sys.stderr
    if not verbose and sys.stderr is sys.__stderr__ and _has_fd(sys.stderr):
        sys.stderr.flush()
        _terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 2)  # Ray's C++ core and its child processes write here, not through Python
        os.close(fd)
    to_terminal = logging.StreamHandler(_terminal)
    to_terminal.setFormatter(logging.Formatter(_FORMAT))
    if not verbose:
        to_terminal.addFilter(_Own())
    root = logging.getLogger()
    root.handlers[:] = [to_file, to_terminal]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.captureWarnings(True)  # deprecation warnings: to the file (and the terminal with --verbose)
    return path


def announce() -> None:
    """Say where Ray's logs go (called when Ray starts: a config error's output stays one line)."""
    if _path is not None and not _verbose:
        logging.getLogger(__name__).info("Ray and library logs: %s (--verbose shows them here)", _path)


def _has_fd(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False
