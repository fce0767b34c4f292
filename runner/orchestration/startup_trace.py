"""Where a run's fixed start-up time goes: opt-in timestamps of its phases, driver and replicas alike.

With `RUNNER_TRACE_STARTUP=<file>` set, each `mark(phase)` appends `<epoch seconds> <pid> <phase>` to
that file; the first mark of a process also records when the process itself started (from /proc, so
the interpreter's start and the imports before the first mark are counted), and the driver's last
line is written at interpreter exit, after Ray's own shutdown. Ray's local workers inherit the
driver's environment, so a replica's marks land in the same file. Unset (the default), a mark is one
dictionary lookup. `python -m runner.orchestration.startup_trace FILE` prints the phases as offsets from the first
process start, which is how the table in docs/performance.md was made.
"""

from __future__ import annotations

import atexit
import os
import sys
import time

ENV = "RUNNER_TRACE_STARTUP"
_started: set[int] = set()


def mark(phase: str, at_exit: str | None = None) -> None:
    """Record `phase` now (no-op unless RUNNER_TRACE_STARTUP names a file); `at_exit` also records
    that phase when the interpreter exits (registered once per process)."""
    path = os.environ.get(ENV)
    if not path:
        return
    pid = os.getpid()
    lines = []
    if pid not in _started:
        _started.add(pid)
        start = _process_start()
        if start is not None:
            lines.append(f"{start:.3f} {pid} process start ({os.path.basename(sys.argv[0]) or 'python'})")
        if at_exit:
            atexit.register(mark, at_exit)
    lines.append(f"{time.time():.3f} {pid} {phase}")
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def _process_start() -> float | None:
    """This process's start as epoch seconds (Linux: its start tick after boot + the boot time)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def report(path: str) -> str:
    """The marks in `path` as offsets (s) from the earliest, with each one's step from the previous."""
    marks = sorted((float(t), pid, phase) for t, pid, phase in (ln.split(" ", 2) for ln in _lines(path)))
    if not marks:
        return "no marks"
    first, previous = marks[0][0], marks[0][0]
    out = []
    for t, pid, phase in marks:
        out.append(f"{t - first:7.2f} {f'+{t - previous:.2f}':>8} {pid:>7}  {phase}")
        previous = t
    return "\n".join(out)


def _lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


if __name__ == "__main__":
    print(report(sys.argv[1]))
