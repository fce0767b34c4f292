"""The engine: one loaded model + tokenizer + a batching strategy. Plain Python, no Ray.

`Engine.generate(requests)` is the whole interface the orchestration layer needs; it returns one
Completion per request, in request order, whatever order the strategy computed them in. It may be
called from several threads at once (a replica with several Ray Data batches in flight); each strategy
keeps its model busy with whatever the callers have submitted.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import AbstractContextManager, nullcontext

import torch

from runner.config import BatchingConfig, ModelConfig, PlacementConfig, SamplingConfig
from runner.engine import adapters, constraints, logprobs
from runner.engine.architecture import REFUSALS, Architecture, exact_strategies
from runner.engine.continuous import ContinuousGenerator
from runner.engine.generate import GenerateGenerator, unsupported_options
from runner.engine.loading import AttentionSupport, Devices, describe_loading, load_model, load_tokenizer
from runner.engine.padded import PaddedGenerator
from runner.engine.race import Race
from runner.engine.scoring import LoglikelihoodScorer, ScoreRequest, ScoreResult
from runner.engine.strategy import probe_failure, strategy_plan
from runner.engine.types import Completion, Progress, Request
from runner.errors import ConfigError

log = logging.getLogger(__name__)

STRATEGIES = {"padded": PaddedGenerator, "continuous": ContinuousGenerator, "generate": GenerateGenerator}
RACED = ("padded", "continuous")  # auto measures which of these is faster on the job's rows


def model_devices(model) -> set[str]:
    """The devices a loaded model's weights sit on (several when device_map split it)."""
    placed = getattr(model, "hf_device_map", None) or {"": model.device}
    # accelerate writes GPU placements as bare indices (0, 1); name them as torch does.
    return {f"cuda:{d}" if isinstance(d, int) else str(d) for d in placed.values()}


class Engine:
    """Loads a model once and completes batches of requests with it."""

    def __init__(
        self,
        model: ModelConfig,
        sampling: SamplingConfig,
        batching: BatchingConfig | None = None,
        placement: PlacementConfig | None = None,
        devices: Devices | None = None,
        rows_ahead: int | None = None,
    ):
        """`rows_ahead`: how many rows this engine is expected to generate in all (a job's rows over
        its replicas), which decides whether `auto` may race its strategies (runner.engine.race);
        None: each call's own rows decide."""
        self.devices = devices or Devices.detect()
        self.tokenizer = load_tokenizer(model)
        self.model = adapters.apply(load_model(model, placement or PlacementConfig(), self.devices), model)
        self.sampling = sampling
        self.batching = batching or BatchingConfig()
        self.architecture = Architecture.of(self.model)
        self.rows_ahead = rows_ahead
        plan = strategy_plan(self.batching.strategy, model_devices(self.model), self.architecture)
        plan = adapters.plan_for(plan, model, REFUSALS["padded"](self.architecture))
        self.strategy, self.strategy_reason, self.generator = self._start(plan)
        self.race = self._race(plan)
        self.loading = describe_loading(model, self.devices, AttentionSupport.of(self.architecture_class()))
        self._check_options(model, sampling)
        self.scorer = LoglikelihoodScorer(self.model, self.batching)
        log.info(
            "engine ready: %s on %s, strategy %s (%s), %d torch threads",
            type(self.model).__name__,
            ", ".join(sorted(model_devices(self.model))),
            self.strategy,
            self.strategy_reason,
            torch.get_num_threads(),
        )

    def _start(self, plan: list[tuple[str, str]]):
        """The first planned strategy that passes the start-up probe (runner.engine.strategy)."""
        failures = []
        for strategy, why in plan:
            generator, failure = self._try(strategy)
            if failure is None:
                log.info("strategy %s for %s: %s", strategy, self.architecture.name, why)
                return strategy, why, generator
            failures.append(f"{strategy} fails on {self.architecture.name} at start ({failure})")
        tried = {strategy for strategy, _ in plan}
        others = [s for s in exact_strategies(self.architecture) if s not in tried]
        hint = f"; use {' or '.join(others)} (or auto)" if others else ""
        raise ConfigError("batching.strategy: " + "; ".join(failures) + hint)

    def _try(self, strategy: str):
        """(a started generator, None), or (None, why it failed the start-up probe)."""
        generator = STRATEGIES[strategy](self.model, self.tokenizer, self.sampling, self.batching)
        failure = probe_failure(generator, self.tokenizer, self.batching.stall_timeout_s)
        if failure is None:
            return generator, None
        generator.close()
        log.warning("strategy %s fails on %s at start: %s", strategy, self.architecture.name, failure)
        return None, failure

    def _race(self, plan: list[tuple[str, str]]) -> Race | None:
        """`auto` with padded and continuous both exact, the model on one device: which runs is
        measured on the job's rows (runner.engine.race)."""
        one_device = len(model_devices(self.model)) == 1
        if self.batching.strategy != "auto" or self.strategy not in RACED or not one_device:
            return None
        rival = next((s for s, _ in plan if s in RACED and s != self.strategy), None)
        if rival is None:
            return None
        race = Race(self.strategy, rival, self._try, rows=self.batching.max_batch_size)
        if self.rows_ahead is not None and self.rows_ahead < race.pays_from:
            self.strategy_reason += (
                f"; not raced against {rival}: {self.rows_ahead} rows ahead of this replica, "
                f"a trial pays from {race.pays_from}"
            )
            return None
        self.strategy_reason += f"; raced against {rival} on the first call of {race.min_rows}+ rows"
        return race

    def _check_options(self, model: ModelConfig, sampling: SamplingConfig) -> None:
        """Generation options the running strategy cannot honour fail at start, naming the option.

        Only the generate strategy lacks some (runner.engine.generate.unsupported_options): it runs the
        models padded and continuous cannot run exactly, and those options need padded's decode loop."""
        if self.strategy != "generate":
            return
        fields = unsupported_options(sampling)
        if fields:
            why = REFUSALS["padded"](self.architecture) or "batching.strategy is generate"
            raise ConfigError(
                f"{fields[0]}: not supported for {self.architecture.name}, which runs with the generate "
                f"strategy only ({why}); remove {', '.join(fields)}"
            )

    def architecture_class(self) -> type:
        """The transformers model class under any adapter wrapper (PEFT's)."""
        inner = getattr(self.model, "get_base_model", None)
        return type(inner() if callable(inner) else self.model)

    def describe(self) -> dict[str, str | list[str]]:
        """What this engine runs and why: strategy, attention, dtype, quantization (each with its
        reason), the model class and its devices. The driver shows it and writes it to the summary."""
        return {
            "model_class": self.architecture_class().__name__,
            "devices": sorted(model_devices(self.model)),
            "strategy": self.strategy,
            "strategy_reason": self.strategy_reason,
            **self.loading,
        }

    @property
    def row_options_supported(self) -> bool:
        """Whether rows may carry their own sampling, schema or adapter (the generate strategy: no)."""
        return self.strategy != "generate"

    @property
    def context_length(self) -> int | None:
        """The model's maximum sequence length, when its config states one."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of prompts as the model will see them (special tokens included)."""
        return self.tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []

    def generate(self, requests: list[Request], progress: Progress | None = None) -> list[Completion]:
        """Complete every request; results come back in request order. Out-of-memory splits, never drops.

        Safe to call from several threads: each strategy merges concurrent callers' rows into the
        batches it runs (padded: a shared pool of waiting rows; continuous: one running manager).
        `progress`: counts the steps that advance these rows (the watchdog's signal, runner.engine.watchdog)."""
        requests = constraints.with_default(requests, self.sampling)  # sampling.json_schema / regex / choices
        if progress is not None:
            requests = [dataclasses.replace(r, progress=progress) for r in requests]
        done = self._generate(requests)
        if logprobs.wanted(self.sampling, requests):
            logprobs.attach(self.model, requests, done, self.sampling)
        return done

    def _generate(self, requests: list[Request]) -> list[Completion]:
        race = self.race
        if race is not None and race.due(len(requests), self.rows_ahead):
            raced = race.run(self.generator, requests)
            if raced is not None:
                self.generator, done = raced
                self.strategy, self.strategy_reason = race.decision["strategy"], race.decision["reason"]
                return done
        return self.generator.generate(requests)

    def score(self, requests: list[ScoreRequest], progress: Progress | None = None) -> list[ScoreResult]:
        """Summed log-probability of each request's continuation after its context, and whether it is
        the greedy continuation; in request order (`runner.engine.scoring`)."""
        return self.scorer.score(requests, progress)

    def announce(self) -> AbstractContextManager:
        """Context for a caller that is about to prepare and submit rows from another thread (a Ray
        Data batch in flight): a strategy that plans batches waits briefly for them (padded)."""
        if self.race is not None and not self.race.decided:
            # Undecided, a caller must not be waited for by a strategy it may not run on (padded
            # gathers announced callers): the trial would time that wait.
            return nullcontext()
        return self.generator.announce()

    def close(self) -> None:
        """Stop the strategy's background work (the continuous manager's thread)."""
        self.generator.close()
