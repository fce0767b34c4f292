"""`auto` between padded and continuous, decided by a race on the replica's own rows.

Which of the two is faster depends on the device and on the workload: on CPU, padded led on the
README's benchmark rows while continuous led on a workload of longer outputs (280 vs 338 tokens/s), so
a rule by device alone runs the slower one on some jobs. When both are exact for the model and it
sits on one device, `auto` starts the device's preferred strategy (runner.engine.strategy) and, at the
first call with at least MIN_ROWS rows, races the two on a sample of those rows: the rows, sorted by
prompt length, are picked evenly over the lengths and dealt in turn into two halves of the same length
mix (ROWS each), each half runs on one strategy, and the one that computed more token positions per
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

# Rows per strategy in the trial: the slower strategy computes at most this many rows, ~3% of a
# 256-row call (a replica's Ray Data batch) at a 20-30% gap; enough rows for a few batches' worth of
# steps, so one slow step does not decide.
ROWS = 16
MIN_ROWS = 4 * ROWS  # a smaller call runs on the current strategy, undecided


class Race:
    """The undecided `auto` choice between the running strategy and its `rival`, decided once."""

    def __init__(self, current: str, rival: str, start: Callable[[str], tuple[object, str | None]]):
        self.current = current
        self.rival = rival
        self._start = start  # strategy name -> (started generator, or None, and why not)
        self._lock = threading.Lock()
        self.decision: dict | None = None  # once decided: winner, reason, the measured rates

    @property
    def decided(self) -> bool:
        return self.decision is not None

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
            picks = sample(requests)
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


def sample(requests: list[Request]) -> list[int]:
    """2 x ROWS row indices spread evenly over the prompt lengths, in length order (so dealing them
    in turn gives two halves of the same length mix)."""
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt_ids))
    step = len(order) / (2 * ROWS)
    return [order[int(k * step)] for k in range(2 * ROWS)]


def timed(generator, requests: list[Request]) -> tuple[float, list[Completion]]:
    """(token positions computed per second: prompts and generated tokens, the completions)."""
    start = time.perf_counter()
    done = generator.generate(requests)
    wall = max(time.perf_counter() - start, 1e-9)
    positions = sum(len(r.prompt_ids) + c.generated_tokens for r, c in zip(requests, done, strict=True))
    return positions / wall, done
