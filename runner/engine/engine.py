"""The engine: one loaded model + tokenizer + a batching strategy. Plain Python, no Ray.

`Engine.generate(requests)` is the whole interface the orchestration layer needs; it returns one
Completion per request, in request order, whatever order the strategy computed them in. It may be
called from several threads at once (a replica with several Ray Data batches in flight); each strategy
keeps its model busy with whatever the callers have submitted.
"""

from __future__ import annotations

import logging

import torch

from runner.config import BatchingConfig, ModelConfig, PlacementConfig, SamplingConfig
from runner.engine.continuous import ContinuousGenerator
from runner.engine.loading import Devices, load_model, load_tokenizer
from runner.engine.memory import split_on_oom
from runner.engine.padded import PaddedGenerator
from runner.engine.types import Completion, Request

log = logging.getLogger(__name__)

STRATEGIES = {"padded": PaddedGenerator, "continuous": ContinuousGenerator}


def model_devices(model) -> set[str]:
    """The devices a loaded model's weights sit on (several when device_map split it)."""
    placed = getattr(model, "hf_device_map", None) or {"": model.device}
    return {str(device) for device in placed.values()}


def resolve_strategy(name: str, devices_in_use: int) -> str:
    """auto -> continuous for a model on one device (CPU or one GPU), padded for a model split over several.

    Evidence from scripts/bench.py on 2 CPU cores: handed all rows in one call the two strategies are
    close (padded 0-20% ahead: its decode reads the KV cache in place, the continuous path gathers it
    from pages every step). In the Ray job continuous won (52 s against 63 s on 96 rows): the replica's
    Ray Data batches in flight join one running batch instead of being decoded one after another; and it
    held up far better when other processes shared the cores (60 s against 212 s on 128 rows). On a GPU,
    where a step costs about the same for 8 rows as for 256, keeping every step full matters more still.
    Its paged KV cache lives on the model's first device, though, so a model that device_map spread over
    several devices runs padded, whose cache follows each layer's device.
    """
    if name == "auto":
        return "continuous" if devices_in_use == 1 else "padded"
    if name not in STRATEGIES:
        raise ValueError(f"batching.strategy: unknown {name!r} (known: auto, {', '.join(STRATEGIES)})")
    return name


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
        self.strategy = resolve_strategy(self.batching.strategy, len(model_devices(self.model)))
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
        """Complete every request; results come back in request order. Out-of-memory splits, never drops."""
        done: dict[str, Completion] = {}
        for unit in self.generator.plan(requests):
            done.update((c.id, c) for c in split_on_oom(self.generator.run, unit))
        return [done[r.id] for r in requests]

    def close(self) -> None:
        """Stop the strategy's background work (the continuous manager's thread)."""
        self.generator.close()
