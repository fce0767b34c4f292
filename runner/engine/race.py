"""`auto` between padded and continuous, decided by a race on the replica's own rows.

Which of the two is faster depends on the device and on the workload: on CPU, padded led on the
README's benchmark rows while continuous led on a workload of longer outputs (280 vs 338 tokens/s), so
a rule by device alone runs the slower one on some jobs. When both are exact for the model and it
sits on one device, `auto` starts the device's preferred strategy (runner.engine.strategy) and, at the
first call with at least 4 x its trial rows, races the two on a sample of those rows: the rows,
sorted by prompt length, are picked evenly over the lengths and dealt in turn into two halves of the
same length mix, each half runs on one strategy, and the one that computed more token positions per
second (prompt and generated) runs everything after; the other is closed. The trial's outputs are its
rows' results, nothing is computed twice: both strategies are exact, and sampling draws keyed noise,
so a row's tokens do not depend on which one ran it. vLLM and PyTorch pick kernels by timing them at
start the same way (autotuning); here what is timed is the job's own rows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from runner.engine.types import Completion, Request

log = logging.getLogger(__name__)

# Rows per strategy in the trial: the engine's batching.max_batch_size, so each strategy is timed at
# the concurrency it runs the job at. Which one is faster depends on it: on CPU (scripts/bench.py,
# 112 rows, 2026-12-04) padded led continuous 479 to 400 tokens/s on full batches of 64, while a
# 16-row trial measured continuous ahead (1,573 vs 1,515 positions/s) and `auto` ran the slower one.
# The slower strategy computes at most a quarter of the deciding call (a 256-row Ray Data batch by
# default), once per replica.
ROWS = 64  # batching.max_batch_size's default
TRIALS_PER_CALL = 4  # a call with fewer than 4 x the trial rows runs on the current strategy, undecided
MIN_ROWS = TRIALS_PER_CALL * ROWS
# A race only where it can pay: the replica has at least this many times the trial's rows ahead of it
# (the job's rows over its replicas; a call's own rows when the engine is not told), so the slower
# strategy computes at most 1/16 of them: under 4% lost to a strategy 60% slower. Below that the
# device's preferred strategy runs: measured on CPU, a 256-row call raced (64 rows each) ran 12-18%
# behind padded, the faster there on every workload measured (scripts/bench.py, 2026-12-04).
PAYS_AFTER_TRIALS = 16


class Race:
    """The undecided `auto` choice between the running strategy and its `rival`, decided once."""

    def __init__(
        self, current: str, rival: str, start: Callable[[str], tuple[object, str | None]], rows: int = ROWS
    ):
        self.current = current
        self.rival = rival
        self.rows = rows  # per strategy in the trial
        self.min_rows = TRIALS_PER_CALL * rows
        self.pays_from = PAYS_AFTER_TRIALS * rows  # rows ahead of the replica for a race to pay
        self._start = start  # strategy name -> (started generator, or None, and why not)
        self._lock = threading.Lock()
        self.decision: dict | None = None  # once decided: winner, reason, the measured rates

    @property
    def decided(self) -> bool:
        return self.decision is not None

    def due(self, call_rows: int, rows_ahead: int | None) -> bool:
        """Whether a call of `call_rows` rows decides: still undecided, big enough for the trial, and
        enough rows ahead for a trial to pay (the call's own when the job's are not known)."""
        ahead = rows_ahead if rows_ahead is not None else call_rows
        return not self.decided and call_rows >= self.min_rows and ahead >= self.pays_from

    def run(self, generator, requests: list[Request]) -> tuple[object, list[Completion]] | None:
        """Race on these rows if still undecided: (the winner's generator, every row's completion);
        None when already decided (by another caller, too: the caller runs on the winner)."""
        with self._lock:
            if self.decided:
                return None
            rival, failure = self._start(self.rival)
            if rival is None:
                self._decide(self.current, f"{self.rival} fails on this model ({failure})", {})
                return generator, generator.generate(requests)
            picks = sample(requests, self.rows)
            halves = {self.current: (generator, picks[0::2]), self.rival: (rival, picks[1::2])}
            done, rates = {}, {}
            for name, (runner, rows) in halves.items():
                rates[name], part = timed(runner, [requests[i] for i in rows])
                done |= dict(zip(rows, part, strict=True))
            winner = max(rates, key=rates.get)
            loser = rival if winner == self.current else generator
            chosen = generator if winner == self.current else rival
            loser.close()
            figures = ", ".join(f"{name} {rate:.0f}" for name, rate in rates.items())
            self._decide(winner, f"faster on {len(picks)} of the job's rows ({figures} tokens/s)", rates)
        rest = [i for i in range(len(requests)) if i not in done]
        done |= dict(zip(rest, chosen.generate([requests[i] for i in rest]), strict=True))
        return chosen, [done[i] for i in range(len(requests))]

    def _decide(self, winner: str, reason: str, rates: dict[str, float]) -> None:
        self.decision = {"strategy": winner, "reason": f"auto: {reason}", "tokens_per_s": rates}
        log.info("strategy %s: %s", winner, self.decision["reason"])


def sample(requests: list[Request], rows: int = ROWS) -> list[int]:
    """2 x `rows` row indices spread evenly over the prompt lengths, in length order (so dealing them
    in turn gives two halves of the same length mix)."""
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt_ids))
    step = len(order) / (2 * rows)
    return [order[int(k * step)] for k in range(2 * rows)]


def timed(generator, requests: list[Request]) -> tuple[float, list[Completion]]:
    """(token positions computed per second: prompts and generated tokens, the completions)."""
    start = time.perf_counter()
    done = generator.generate(requests)
    wall = max(time.perf_counter() - start, 1e-9)
    positions = sum(len(r.prompt_ids) + c.generated_tokens for r, c in zip(requests, done, strict=True))
    return positions / wall, done
