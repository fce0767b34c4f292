"""A running job on the terminal: its phase, a bar over rows with rows/s, tok/s and ETA, and what
each replica's engine chose.

Ray Data hands the driver a replica's output only when a whole Ray Data batch (`rows_per_task`
rows) is done, so a bar fed by those alone jumps once per batch and is silent while models load.
The replicas therefore report to a small Ray actor, the board, named after the output directory:
when each starts loading its model, when it is ready (with its engine's own description: strategy,
attention, dtype, quantization and their reasons), and the rows and tokens of each engine call as it
finishes (jobs.generate.stage splits a batch into calls of a few rows). The driver polls the board once a
second; committed batches update the bar as well (a board that cannot be reached costs the live
view, never the job).

Where the output is not a terminal (a Slurm or nohup log file, `kubectl logs`, a CI log, `runner
submit`'s streamed job log) a bar would write its carriage-return redraws into one ever-growing line,
so there the same figures are written as plain lines instead (`Lines`): one when the phase changes,
then at most one every `RUNNER_PROGRESS_INTERVAL_S` seconds (default 30) while rows arrive, and a
last one at the end. pip and Ray Data's non-interactive mode do the same: no bar where nobody sees it
redraw.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from contextlib import nullcontext
from typing import TextIO

from tqdm import tqdm

from runner import logs

log = logging.getLogger(__name__)

POLL_S = 1.0
LINE_INTERVAL_ENV = "RUNNER_PROGRESS_INTERVAL_S"
LINE_INTERVAL_S = 30.0
MIN_RATE_S = 1.0  # rates (rows/s, tok/s) are shown once their phase has run this long


def board_name(output_path: str) -> str:
    """The board's Ray actor name: one per output directory (one job writes a directory at a time)."""
    return "runner-progress-" + hashlib.sha256(output_path.encode()).hexdigest()[:16]


class Board:
    """What the replicas report (the Ray actor's class; plain Python, so tests can use it directly)."""

    def __init__(self) -> None:
        self.replicas: dict[str, dict] = {}  # label -> {k, phase, engine}
        self.rows = self.errors = self.tokens = 0

    def starting(self, label: str) -> int:
        """A replica starts loading its model; returns its number (1, 2, ...; a restarted one gets a new one)."""
        self.replicas[label] = {"k": len(self.replicas) + 1, "phase": "loading", "engine": None}
        return self.replicas[label]["k"]

    def ready(self, label: str, engine: dict) -> None:
        self.replicas.setdefault(label, {"k": len(self.replicas) + 1})
        self.replicas[label].update(phase="ready", engine=engine)

    def add(self, rows: int, errors: int, tokens: int) -> None:
        self.rows, self.errors, self.tokens = self.rows + rows, self.errors + errors, self.tokens + tokens

    def snapshot(self) -> dict:
        return {"replicas": self.replicas, "rows": self.rows, "errors": self.errors, "tokens": self.tokens}


def open_board(output_path: str):
    """Create the board actor (driver side); None where Ray cannot host it."""
    import ray

    try:
        actor = ray.remote(num_cpus=0)(Board)
        return actor.options(name=board_name(output_path), get_if_exists=True).remote()
    except Exception as err:  # noqa: BLE001 - the live view is optional
        log.warning("no live progress from the replicas: %s", err)
        return None


def close_board(board) -> None:
    """End the board (a rerun in this Ray session starts a fresh one)."""
    if board is None:
        return
    try:
        import ray

        ray.kill(board)
    except Exception:  # noqa: BLE001 - gone already
        pass


class Reporter:
    """A replica's link to the board: fire-and-forget calls, a no-op outside a job (tests, benchmarks)."""

    def __init__(self, output_path: str | None):
        self.board = None
        self.label = ""
        if output_path is None:
            return
        try:
            import ray

            if ray.is_initialized():
                self.board = ray.get_actor(board_name(output_path))
        except Exception:  # noqa: BLE001 - no board (not run by a job): report nothing
            self.board = None

    def starting(self, label: str) -> None:
        self.label = label
        self._send("starting", label)

    def ready(self, engine: dict) -> None:
        self._send("ready", self.label, engine)

    def add(self, rows: int, errors: int, tokens: int) -> None:
        self._send("add", rows, errors, tokens)

    def _send(self, method: str, *args) -> None:
        if self.board is not None:
            try:
                getattr(self.board, method).remote(*args)
            except Exception:  # noqa: BLE001 - the board went away: the job goes on
                self.board = None


class Progress:
    """The bar: committed rows and the board's live counts, the phase in its description."""

    def __init__(self, total: int, replicas: int, board=None, interactive: bool | None = None):
        """`interactive`: draw a bar (default: when the output is a terminal), else write `Lines`."""
        self.total, self.replicas, self.board = total, replicas, board
        out = logs.terminal()
        if interactive is None:
            interactive = hasattr(out, "isatty") and out.isatty()
        if interactive:
            self.bar = tqdm(
                total=total, unit="row", desc=self._loading(0), file=out, dynamic_ncols=True, smoothing=0.1
            )
        else:
            self.bar = Lines(total, self._loading(0), out, line_interval())
        self.committed = self.tokens = self.errors = 0
        self.engines: dict[str, dict] = {}
        self.generating_since: float | None = None  # when the first replica was seen ready
        self.tokens_before = 0  # tokens counted by then
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_loop, name="progress", daemon=True)
        if board is not None:
            self._thread.start()

    def _loading(self, ready: int) -> str:
        return f"starting replicas ({ready}/{self.replicas} ready)"

    def update(self, rows: int, stats) -> None:
        """A committed batch (the board may have counted its rows already)."""
        with self._lock:
            self.committed += rows
            self.tokens = max(self.tokens, stats.generated_tokens)
            self.errors = max(self.errors, stats.rows_error)
            self._count(self.committed)
            self._show()

    def _poll_loop(self) -> None:
        import ray

        while not self._stop.wait(POLL_S):
            try:
                snap = ray.get(self.board.snapshot.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - a missed poll: the committed batches still show
                continue
            self._apply(snap)

    def _apply(self, snap: dict) -> None:
        with self._lock:
            self.tokens = max(self.tokens, snap["tokens"])
            self.errors = max(self.errors, snap["errors"])
            # Rows and tokens first, then the phase: a replica seen ready in this poll may already
            # have produced rows; they count before its phase starts, not in its first second.
            self._count(snap["rows"])
            self._phase(snap["replicas"])
            self._show()

    def _phase(self, replicas: dict) -> None:
        ready = {label: r for label, r in replicas.items() if r.get("phase") == "ready"}
        if ready and self.generating_since is None:
            self.generating_since, self.tokens_before = time.monotonic(), self.tokens
        for label, r in ready.items():
            if label not in self.engines:
                self.engines[label] = r["engine"]
                with self.bar.external_write_mode():
                    log.info("replica %d/%d ready: %s", r["k"], self.replicas, engine_line(r["engine"]))
        self.bar.set_description_str(self._describe(replicas, len(ready)), refresh=False)

    def _describe(self, replicas: dict, ready: int) -> str:
        if ready >= self.replicas:
            return "generating"
        loading = [r["k"] for r in replicas.values() if r.get("phase") == "loading"]
        if not loading:
            return self._loading(ready)
        done = f" ({ready} ready)" if ready else ""
        return f"loading the model on replica {max(loading)}/{self.replicas}{done}"

    def _count(self, live_rows: int) -> None:
        rows = min(self.total, max(self.committed, live_rows))
        if rows > self.bar.n:
            self.bar.update(rows - self.bar.n)

    def _show(self) -> None:
        # Tokens/s since the first replica was seen ready (Ray's start and the model load are not
        # generation), over at least MIN_RATE_S: a rate over a fraction of a second is noise.
        figures = {"errors": self.errors}
        if self.generating_since is not None:
            elapsed = time.monotonic() - self.generating_since
            if elapsed >= MIN_RATE_S:
                figures["tok_s"] = f"{(self.tokens - self.tokens_before) / elapsed:.1f}"
        self.bar.set_postfix(**figures, refresh=False)
        self.bar.refresh()

    def engine_summary(self) -> dict | list | None:
        """The replicas' engine descriptions for the summary: one dict when they agree, else a list."""
        distinct = [
            e for i, e in enumerate(self.engines.values()) if e not in list(self.engines.values())[:i]
        ]
        return distinct[0] if len(distinct) == 1 else (distinct or None)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self._stop.is_set():  # closed already (the job closes it before its last summary)
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
            if self.board is not None:
                try:  # the last reports (e.g. a replica that became ready just now)
                    import ray

                    self._apply(ray.get(self.board.snapshot.remote(), timeout=5))
                except Exception:  # noqa: BLE001
                    pass
        self.bar.close()


def engine_line(engine: dict | None) -> str:
    """One line: what an engine runs and why."""
    if not engine:
        return "unknown"
    return (
        f"{engine.get('model_class')} on {', '.join(engine.get('devices', []))}; "
        f"strategy {engine.get('strategy')} ({engine.get('strategy_reason')}); "
        f"attention {engine.get('attention')} ({engine.get('attention_reason')}); "
        f"dtype {engine.get('dtype')} ({engine.get('dtype_reason')}); "
        f"quantization {engine.get('quantization')}"
    )


def line_interval() -> float:
    """Seconds between two progress lines where the output is not a terminal."""
    raw = os.environ.get(LINE_INTERVAL_ENV)
    try:
        return max(float(raw), 0.0) if raw else LINE_INTERVAL_S
    except ValueError:
        log.warning("%s=%r is not a number of seconds: using %s", LINE_INTERVAL_ENV, raw, LINE_INTERVAL_S)
        return LINE_INTERVAL_S


class Lines:
    """The bar's figures as plain lines, for output that is not a terminal: a line when the phase
    changes, at most one per `interval` seconds while rows arrive, and one at the end. Takes the part
    of tqdm's interface `Progress` uses."""

    def __init__(self, total: int, desc: str, out: TextIO, interval: float):
        self.total, self.desc, self.out, self.interval = total, desc, out, interval
        self.n = 0
        self.postfix = ""
        self.started = time.monotonic()
        self._phase_start = (self.started, 0)  # (when, rows) the current phase began
        self._written: tuple[str, int] | None = None  # (phase, rows) of the last line
        self._last = float("-inf")
        self._write()

    def update(self, rows: int) -> None:
        self.n += rows

    def set_description_str(self, desc: str, refresh: bool = True) -> None:
        if desc != self.desc:  # rows/s and the ETA are measured over the current phase
            self._phase_start = (time.monotonic(), self.n)
        self.desc = desc
        if refresh:
            self.refresh()

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in sorted(values.items()))
        if refresh:
            self.refresh()

    def refresh(self) -> None:
        """Write a line if the phase changed, or rows arrived and the interval has passed."""
        if self._written is None or self.desc != self._written[0]:
            self._write()
        elif self.n != self._written[1] and time.monotonic() - self._last >= self.interval:
            self._write()

    def external_write_mode(self):
        return nullcontext()

    def close(self) -> None:
        if self._written != (self.desc, self.n):
            self._write()

    def line(self) -> str:
        """`generating: 40% 400/1000 rows [0:00:31, 12.9 rows/s, ETA 0:00:46, errors=0, tok_s=310.2]`"""
        now = time.monotonic()
        share = f"{100 * self.n // self.total}% " if self.total else ""
        figures = [_clock(now - self.started)]
        since, before = self._phase_start
        if self.n > before and now - since >= MIN_RATE_S:
            rate = (self.n - before) / (now - since)
            figures.append(f"{rate:.1f} rows/s")
            if self.n < self.total:
                figures.append(f"ETA {_clock((self.total - self.n) / rate)}")
        if self.postfix:
            figures.append(self.postfix)
        return f"{self.desc}: {share}{self.n}/{self.total} rows [{', '.join(figures)}]"

    def _write(self) -> None:
        try:
            self.out.write(self.line() + "\n")
            self.out.flush()
        except (OSError, ValueError):  # a closed or broken stream costs the view, never the job
            pass
        self._written, self._last = (self.desc, self.n), time.monotonic()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
