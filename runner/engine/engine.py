"""The engine: one loaded model + tokenizer + a batching strategy. Plain Python, no Ray.

`Engine.generate(requests)` is the whole interface the orchestration layer needs; it returns one
Completion per request, in request order, whatever order the strategy computed them in.
"""

from __future__ import annotations

import logging

from runner.config import BatchingConfig, ModelConfig, PlacementConfig, SamplingConfig
from runner.engine.loading import Devices, load_model, load_tokenizer
from runner.engine.padded import PaddedGenerator
from runner.engine.types import Completion, Request

log = logging.getLogger(__name__)

STRATEGIES = {"padded": PaddedGenerator}


def resolve_strategy(name: str) -> str:
    """auto -> the strategy used when the config does not choose one."""
    if name == "auto":
        return "padded"
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
        self.strategy = resolve_strategy(self.batching.strategy)
        self.generator = STRATEGIES[self.strategy](self.model, self.tokenizer, sampling, self.batching)
        log.info("engine ready: %s, strategy %s", type(self.model).__name__, self.strategy)

    @property
    def context_length(self) -> int | None:
        """The model's maximum sequence length, when its config states one."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of prompts as the model will see them (special tokens included)."""
        return self.tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []

    def generate(self, requests: list[Request]) -> list[Completion]:
        """Complete every request; results come back in request order."""
        by_id = {c.id: c for c in self.generator.run(requests)}
        return [by_id[r.id] for r in requests]
