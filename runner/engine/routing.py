"""Which rows the continuous strategy hands to a padded generator, and running both halves at once.

transformers' continuous batching manager applies logits processors per step with one int32 argument
per request and processor, prepared before the step (and, with async batching on CUDA, before the
previous step's token is known). That carries a sampling key or a temperature exactly, but not what a
row's token history decides: a grammar's vocabulary-sized mask (xgrammar's matcher must have accepted
every earlier token) or repetition / presence / frequency penalties. Rather than approximate them, those
rows run in a padded generator over the same model (padded keeps each row's state on the host), while
the other rows of the same call run in the manager; results come back in request order. Correctness
first: every row computes exactly what it would in `padded`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from runner.config import SamplingConfig
from runner.engine.processors import own_penalties, penalties_used
from runner.engine.sampling import row_params
from runner.engine.types import Completion, Request


def needs_padded(request: Request, sampling: SamplingConfig, manager_keys: set[str]) -> bool:
    """Whether a request needs per-row host state the manager cannot give (see module docstring).

    `manager_keys`: the per-request arguments the manager's processors take (temperature, top_p, ...)."""
    if request.constraint is not None or penalties_used(sampling) or own_penalties(request):
        return True
    if request.sampling is None:
        return False
    params = row_params(sampling, request)
    if "sample_key" not in manager_keys:  # a greedy manager: no sampling processors at all
        return not params.greedy
    return params.top_p != sampling.top_p and "top_p" not in manager_keys


def split_run(
    requests: list[Request],
    padded: Callable[[Request], bool],
    run_native: Callable[[list[Request]], list[Completion]],
    run_padded: Callable[[list[Request]], list[Completion]],
) -> list[Completion]:
    """Completions in request order: `padded(r)` rows through run_padded (in a second thread, so both
    halves compute at once), the rest through run_native."""
    other = [r for r in requests if padded(r)]
    if not other:
        return run_native(requests)
    native = [r for r in requests if not padded(r)]
    result: dict[str, list[Completion] | BaseException] = {}
    threads = torch.get_num_threads()  # OpenMP keeps its thread count per thread (see jobs.generate.stage)

    def work() -> None:
        torch.set_num_threads(threads)
        try:
            result["padded"] = run_padded(other)
        except BaseException as err:  # noqa: BLE001 - raised again in the caller's thread
            result["padded"] = err

    thread = threading.Thread(target=work, name="continuous-to-padded", daemon=True)
    thread.start()
    native_done = iter(run_native(native) if native else [])
    thread.join()
    if isinstance(result["padded"], BaseException):
        raise result["padded"]
    padded_done = iter(result["padded"])
    return [next(padded_done) if padded(r) else next(native_done) for r in requests]
