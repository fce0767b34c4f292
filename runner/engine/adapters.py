"""LoRA adapters (PEFT) over the base model: one merged, or several picked per row.

- `model.adapter: PATH`: peft loads the adapter and merges it into the base weights
  (`merge_and_unload`), so the engine runs a plain transformers model: both strategies, no per-token
  cost, output equal to `generate` of the merged model.
- `model.adapters: {name: path}` + `data.adapter_column`: every adapter is loaded into the one base
  model through transformers' PEFT integration (`load_adapter`); the padded strategy plans batches per
  adapter and activates each batch's adapter (`set_adapter`, or `disable_adapters` for rows without one).
  The active adapter is model-global state in peft, and the continuous manager packs rows of every
  request into each forward, so rows of different adapters cannot share its steps: a job with several
  adapters runs the padded strategy (`strategy_for`), and says so in the log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from runner import compat
from runner.config import ModelConfig
from runner.errors import ConfigError, first_line

log = logging.getLogger(__name__)


def _resolve(path: str) -> str:
    from runner.engine.loading import resolve_path

    return resolve_path(path)


def apply(model, cfg: ModelConfig):
    """The model with the config's adapters: merged (adapter) or loaded side by side (adapters)."""
    if cfg.adapter:
        from peft import PeftModel

        try:
            merged = PeftModel.from_pretrained(model, _resolve(cfg.adapter)).merge_and_unload()
        except (OSError, ValueError) as err:
            raise ConfigError(f"model.adapter: cannot load {cfg.adapter!r}: {first_line(err)}") from None
        return merged.eval()
    problem = compat.adapter_switching_problem() if cfg.adapters else None
    if problem is not None:
        raise ConfigError(f"model.adapters: {problem}; use model.adapter (merged) for one adapter")
    for name, path in (cfg.adapters or {}).items():
        try:
            model.load_adapter(_resolve(path), adapter_name=name)
        except (OSError, ValueError) as err:
            raise ConfigError(f"model.adapters.{name}: cannot load {path!r}: {first_line(err)}") from None
    return model.eval()


def plan_for(plan: list[tuple[str, str]], cfg: ModelConfig, padded_refusal: str | None) -> list:
    """The strategy plan with several adapters: padded only (see module docstring), or a ConfigError
    when padded is not exact for the model (`padded_refusal`, from runner.engine.architecture)."""
    if not cfg.adapters or all(strategy == "padded" for strategy, _ in plan):
        return plan
    if padded_refusal is not None:
        raise ConfigError(
            f"model.adapters: several adapters need the padded strategy, which is not exact for this "
            f"model ({padded_refusal}); use model.adapter (merged) instead"
        )
    log.info("model.adapters: rows of different adapters cannot share a continuous batch; using padded")
    return [("padded", "model.adapters: several adapters run in padded batches, one adapter each")]


_ACTIVE = threading.Lock()


@contextmanager
def active(model, name: str | None) -> Iterator[None]:
    """Run the enclosed forwards with adapter `name` (None: the base model) active on `model`.

    A no-op for a model without loaded adapters; the lock keeps two threads from switching at once."""
    if not compat.has_loaded_adapters(model):
        yield
        return
    with _ACTIVE:
        if name is None:
            model.disable_adapters()
        else:
            model.enable_adapters()
            model.set_adapter(name)
        yield


def groups(requests: list) -> list[list]:
    """Requests grouped by adapter (one group, the same list, when no row names one)."""
    if all(r.adapter is None for r in requests):
        return [requests]
    by_adapter: dict[str | None, list] = {}
    for r in requests:
        by_adapter.setdefault(r.adapter, []).append(r)
    return list(by_adapter.values())
