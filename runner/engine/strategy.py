"""Which batching strategy an engine runs: exact for the model first, then the fastest on its devices.

`strategy_plan` orders the candidates (runner.engine.architecture decides which are exact); the
engine starts the first and runs `probe_failure` on it: two short rows of different lengths. A model
with something no property announces (a forward that rejects what the strategy passes it, a layer that
fails on the packed layout) then fails here, at start, instead of on every row of the job: `auto`
moves on to the next exact strategy, an explicit strategy is refused with the failure.
"""

from __future__ import annotations

import dataclasses
import logging

from runner.engine.architecture import REFUSALS, Architecture, exact_strategies
from runner.engine.types import Request
from runner.errors import ConfigError, first_line

log = logging.getLogger(__name__)

PROBE_TEXTS = ["Hello", "The quick brown fox jumps over the lazy dog, twice over."]


def preferred_strategy(devices: set[str]) -> str:
    """The strategy `auto` starts with when both are exact for the model: on one device, in a job
    long enough for a trial to pay, the engine then races it against the other on the job's first
    rows and keeps the faster (runner.engine.race).

    continuous for a model on one CUDA GPU; padded on CPU and for a model split over devices.
    CPU: scripts/bench.py on a quiet 2-core machine (2026-12-04, small-llama fp32, greedy) measured
    padded ahead of or level with continuous on every mix tried: 112 rows of 16-1,024 prompt tokens
    and 8-128 new, 479 vs 400 tokens/s; 256 such rows, 533 vs 499; 256 rows of 16-64 prompt tokens
    and 8-256 new, 1,662 vs 1,044; 64 rows of 16-512 and 8-64, 447 vs 448. There a step's cost grows
    with the rows in it, so the padded loop's shrinking batches lose little, while continuous batching
    pays its scheduler and paged-cache bookkeeping at every step. One GPU: a decode step costs about the same
    for 8 rows as for 256, so keeping every step full (finished rows replaced at once, prompts packed
    without padding) is what pays. On one H200 (2026-12-04, docs/performance.md#gpu) `continuous` failed
    its start probe on torch 2.11 (fixed since, in runner.compat.torch) and `padded` ran at the naive
    baseline's speed on 96 rows: neither is measured at its best there yet, so this stays the rule
    until they are (the race below still keeps the faster on a long job). Split models:
    the paged KV cache lives on the model's first device, while padded's cache follows each layer's.
    """
    single_gpu = len(devices) == 1 and next(iter(devices)).startswith("cuda")
    return "continuous" if single_gpu else "padded"


def strategy_plan(name: str, devices: set[str], arch: Architecture | None = None) -> list[tuple[str, str]]:
    """(strategy, why) candidates in the order to try them. `auto`: the device's preferred strategy if
    it is exact for the model, then the other exact ones, fastest first. An explicit strategy is the
    only candidate, and a ConfigError when it cannot be exact. Without `arch` every strategy counts
    as exact."""
    if name != "auto" and name not in REFUSALS:
        raise ValueError(f"batching.strategy: unknown {name!r} (known: auto, {', '.join(REFUSALS)})")
    if arch is None:
        return [(preferred_strategy(devices) if name == "auto" else name, "set in config")]
    exact = exact_strategies(arch)
    if name != "auto":
        refusal = REFUSALS[name](arch)
        if refusal is not None:
            raise ConfigError(
                f"batching.strategy: {name} cannot be exact for {arch.name}: {refusal}; "
                f"use {' or '.join(exact)} (or auto)"
            )
        return [(name, "set in config")]
    preferred = preferred_strategy(devices)
    if preferred in exact:
        why = f"auto: {preferred} is the faster exact strategy on {', '.join(sorted(devices))}"
        return [(preferred, why)] + [(s, "auto: next exact strategy") for s in exact if s != preferred]
    why = f"auto: {preferred} is not exact for {arch.name} ({REFUSALS[preferred](arch)})"
    return [(s, why) for s in exact]


def choose_strategy(name: str, devices: set[str], arch: Architecture | None = None) -> tuple[str, str]:
    """(strategy, why): the first candidate of `strategy_plan`."""
    return strategy_plan(name, devices, arch)[0]


def probe_failure(generator, tokenizer, stall_timeout_s: float | None = None) -> str | None:
    """Run two short greedy rows of different lengths under the stall watchdog; the first failure as
    one line naming the libraries it ran on, or None. A strategy whose threads die fails here in
    seconds (runner.engine.continuous), one that hangs after `stall_timeout_s` without progress."""
    from runner import compat
    from runner.engine.watchdog import Stalled, Watchdog

    ids = tokenizer(PROBE_TEXTS, add_special_tokens=True)["input_ids"]
    requests = [Request(f"probe-{i}", p or [0], 2) for i, p in enumerate(ids)]

    def probe(progress) -> list:
        return generator.generate([dataclasses.replace(r, progress=progress) for r in requests])

    try:
        done = Watchdog(stall_timeout_s).call(probe)
        failure = next((c.error for c in done if c.error), None)
    except Stalled as err:
        failure = str(err)
    except Exception as err:  # noqa: BLE001 - any failure here would fail every row of the job
        failure = f"{type(err).__name__}: {first_line(err)}"
    if failure is None or "transformers " in failure:
        return failure
    return f"{failure} [{compat.versions_line('transformers', 'torch')}]"
