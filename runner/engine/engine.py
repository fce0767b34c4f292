"""The engine: one loaded model + tokenizer + a batching strategy. Plain Python, no Ray.

`Engine.generate(requests)` is the whole interface the orchestration layer needs; it returns one
Completion per request, in request order, whatever order the strategy computed them in. It may be
called from several threads at once (a replica with several Ray Data batches in flight); each strategy
keeps its model busy with whatever the callers have submitted.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager

import torch

from runner.config import BatchingConfig, ModelConfig, PlacementConfig, SamplingConfig
from runner.engine.architecture import REFUSALS, Architecture, exact_strategies
from runner.engine.continuous import ContinuousGenerator
from runner.engine.generate import GenerateGenerator
from runner.engine.loading import Devices, load_model, load_tokenizer
from runner.engine.padded import PaddedGenerator
from runner.engine.types import Completion, Request
from runner.errors import ConfigError

log = logging.getLogger(__name__)

STRATEGIES = {"padded": PaddedGenerator, "continuous": ContinuousGenerator, "generate": GenerateGenerator}


def model_devices(model) -> set[str]:
    """The devices a loaded model's weights sit on (several when device_map split it)."""
    placed = getattr(model, "hf_device_map", None) or {"": model.device}
    # accelerate writes GPU placements as bare indices (0, 1); name them as torch does.
    return {f"cuda:{d}" if isinstance(d, int) else str(d) for d in placed.values()}


def preferred_strategy(devices: set[str]) -> str:
    """The faster strategy for these devices, when both are exact for the model.

    continuous for a model on one CUDA GPU; padded on CPU and for a model split over devices.
    CPU: scripts/bench.py measured padded ahead of continuous in most runs (3.4-4.5x vs 3.1-3.5x the
    baseline, README; continuous ahead in one of five), because there a step's cost grows with the
    rows in it, so the padded loop's shrinking batches lose little, while continuous batching pays its scheduler and
    paged-cache bookkeeping at every step. One GPU: a decode step costs about the same for 8 rows as
    for 256, so keeping every step full (finished rows replaced at once, prompts packed without
    padding) is what pays; not yet measured here (no GPU in the sessions so far). Split models: the
    paged KV cache lives on the model's first device, while padded's cache follows each layer's device.
    """
    single_gpu = len(devices) == 1 and next(iter(devices)).startswith("cuda")
    return "continuous" if single_gpu else "padded"


def choose_strategy(name: str, devices: set[str], arch: Architecture | None = None) -> tuple[str, str]:
    """(strategy, why): `auto` takes the device's preferred strategy if it is exact for the model, else
    the fastest exact one; an explicit strategy that is not exact for the model is a ConfigError.
    Without `arch` (no model to inspect) every strategy counts as exact."""
    if name != "auto" and name not in STRATEGIES:
        raise ValueError(f"batching.strategy: unknown {name!r} (known: auto, {', '.join(STRATEGIES)})")
    if arch is None:
        return (preferred_strategy(devices) if name == "auto" else name), "set in config"
    exact = exact_strategies(arch)
    if name != "auto":
        refusal = REFUSALS[name](arch)
        if refusal is not None:
            raise ConfigError(
                f"batching.strategy: {name} cannot be exact for {arch.name}: {refusal}; "
                f"use {' or '.join(exact)} (or auto)"
            )
        return name, "set in config"
    preferred = preferred_strategy(devices)
    if preferred in exact:
        return preferred, f"auto: {preferred} is the faster exact strategy on {', '.join(sorted(devices))}"
    return exact[0], f"auto: {preferred} is not exact for {arch.name} ({REFUSALS[preferred](arch)})"


def resolve_strategy(name: str, devices: set[str], arch: Architecture | None = None) -> str:
    """The strategy `choose_strategy` picks (without its reason)."""
    return choose_strategy(name, devices, arch)[0]


class Engine:
    """Loads a model once and completes batches of requests with it."""

    def __init__(
        self,
        model: ModelConfig,
        sampling: SamplingConfig,
        batching: BatchingConfig | None = None,
        placement: PlacementConfig | None = None,
        devices: Devices | None = None,
    ):
        self.devices = devices or Devices.detect()
        self.tokenizer = load_tokenizer(model)
        self.model = load_model(model, placement or PlacementConfig(), self.devices)
        self.sampling = sampling
        self.batching = batching or BatchingConfig()
        self.architecture = Architecture.of(self.model)
        self.strategy, why = choose_strategy(
            self.batching.strategy, model_devices(self.model), self.architecture
        )
        log.info("strategy %s for %s: %s", self.strategy, self.architecture.name, why)
        self.generator = STRATEGIES[self.strategy](self.model, self.tokenizer, sampling, self.batching)
        log.info(
            "engine ready: %s on %s, strategy %s, %d torch threads",
            type(self.model).__name__,
            ", ".join(sorted(model_devices(self.model))),
            self.strategy,
            torch.get_num_threads(),
        )

    @property
    def context_length(self) -> int | None:
        """The model's maximum sequence length, when its config states one."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of prompts as the model will see them (special tokens included)."""
        return self.tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []

    def generate(self, requests: list[Request]) -> list[Completion]:
        """Complete every request; results come back in request order. Out-of-memory splits, never drops.

        Safe to call from several threads: each strategy merges concurrent callers' rows into the
        batches it runs (padded: a shared pool of waiting rows; continuous: one running manager)."""
        return self.generator.generate(requests)

    def announce(self) -> AbstractContextManager:
        """Context for a caller that is about to prepare and submit rows from another thread (a Ray
        Data batch in flight): a strategy that plans batches waits briefly for them (padded)."""
        return self.generator.announce()

    def close(self) -> None:
        """Stop the strategy's background work (the continuous manager's thread)."""
        self.generator.close()
