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
from runner.engine import adapters, constraints, logprobs
from runner.engine.continuous import ContinuousGenerator
from runner.engine.loading import Devices, load_model, load_tokenizer
from runner.engine.padded import PaddedGenerator
from runner.engine.scoring import LoglikelihoodScorer, ScoreRequest, ScoreResult
from runner.engine.types import Completion, Request

log = logging.getLogger(__name__)

STRATEGIES = {"padded": PaddedGenerator, "continuous": ContinuousGenerator}


def model_devices(model) -> set[str]:
    """The devices a loaded model's weights sit on (several when device_map split it)."""
    placed = getattr(model, "hf_device_map", None) or {"": model.device}
    # accelerate writes GPU placements as bare indices (0, 1); name them as torch does.
    return {f"cuda:{d}" if isinstance(d, int) else str(d) for d in placed.values()}


def resolve_strategy(name: str, devices: set[str]) -> str:
    """auto -> continuous for a model on one CUDA GPU; padded on CPU and for a model split over devices.

    CPU: scripts/bench.py measured padded ahead of continuous in most runs (3.4-4.5x vs 3.1-3.5x the
    baseline, README; continuous ahead in one of five), because there a step's cost grows with the
    rows in it, so the padded loop's shrinking batches lose little, while continuous batching pays its scheduler and
    paged-cache bookkeeping at every step. One GPU: a decode step costs about the same for 8 rows as
    for 256, so keeping every step full (finished rows replaced at once, prompts packed without
    padding) is what pays; not yet measured here (no GPU in the sessions so far). Split models: the
    paged KV cache lives on the model's first device, while padded's cache follows each layer's device.
    """
    if name == "auto":
        single_gpu = len(devices) == 1 and next(iter(devices)).startswith("cuda")
        return "continuous" if single_gpu else "padded"
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
        self.model = adapters.apply(load_model(model, placement or PlacementConfig(), self.devices), model)
        self.sampling = sampling
        self.batching = batching or BatchingConfig()
        self.strategy = resolve_strategy(self.batching.strategy, model_devices(self.model))
        self.strategy = adapters.strategy_for(self.strategy, model)
        self.generator = STRATEGIES[self.strategy](self.model, self.tokenizer, sampling, self.batching)
        self.scorer = LoglikelihoodScorer(self.model, self.batching)
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
        requests = constraints.with_default(requests, self.sampling)  # sampling.json_schema / regex / choices
        done = self.generator.generate(requests)
        if logprobs.wanted(self.sampling):
            logprobs.attach(self.model, requests, done, self.sampling)
        return done

    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        """Summed log-probability of each request's continuation after its context, and whether it is
        the greedy continuation; in request order (`runner.engine.scoring`)."""
        return self.scorer.score(requests)

    def announce(self) -> AbstractContextManager:
        """Context for a caller that is about to prepare and submit rows from another thread (a Ray
        Data batch in flight): a strategy that plans batches waits briefly for them (padded)."""
        return self.generator.announce()

    def close(self) -> None:
        """Stop the strategy's background work (the continuous manager's thread)."""
        self.generator.close()
