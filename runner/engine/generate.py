"""The generate strategy: transformers' own `model.generate` and cache, on prompts of equal length only.

It is the strategy for models our other two cannot run exactly (runner.engine.architecture): state-space
and hybrid models, whose recurrent state would run through left padding; models whose forward takes no
`position_ids`; layer kinds other than plain key/value attention. Batching only prompts of the same
token length means no row is ever padded, so each row computes exactly what it computes alone (the
model's own cache, masks and positions, untouched). Rows of other lengths run in other batches, a lone
row as a batch of one. Each batch decodes to its largest `max_new_tokens`; every row is then cut at its
own limit, EOS or stop string by the shared `Stopper`, as in the other strategies.

Sampling uses the same keyed Gumbel noise as the other strategies (a logits processor after
transformers' warpers, then greedy argmax), so a row draws the same tokens whichever strategy runs it.
"""

from __future__ import annotations

import copy
import threading
from contextlib import AbstractContextManager, nullcontext
from itertools import groupby

import torch

from runner.config import BatchingConfig, SamplingConfig
from runner.engine.batching import plan_batches
from runner.engine.constraints import job_constraint
from runner.engine.memory import split_on_oom, token_budget
from runner.engine.processors import penalties_used
from runner.engine.sampling import gumbel_noise, step_key, warpers
from runner.engine.sequence import Sequence, Stopper, eos_ids, expand
from runner.engine.types import Completion, Request, stepped


def unsupported_options(sampling: SamplingConfig) -> list[str]:
    """Job options this strategy cannot honour: a grammar and penalties act on every step's logits
    with each row's own state, which our padded decode loop keeps and `generate`'s processors here do
    not. (min_p, stop_token_ids and stop strings it does honour.)"""
    fields = []
    constraint = job_constraint(sampling)
    if constraint is not None:
        fields.append(f"sampling.{constraint.kind}")
    if penalties_used(sampling):
        fields += [
            f"sampling.{name}"
            for name, neutral in (
                ("repetition_penalty", 1.0),
                ("presence_penalty", 0.0),
                ("frequency_penalty", 0.0),
            )
            if getattr(sampling, name) != neutral
        ]
    return fields


def row_option_error(request: Request) -> str | None:
    """Why a row's own options (sampling, schema or adapter columns) cannot run here, or None."""
    given = [name for name in ("sampling", "constraint", "adapter") if getattr(request, name) is not None]
    if not given:
        return None
    return f"row options ({', '.join(given)}) are not supported by the generate strategy this model runs with"


class KeyedNoise:
    """A `generate` logits processor adding each row's keyed Gumbel noise (see runner.engine.sampling)."""

    def __init__(self, keys: list[int]):
        self.keys = keys

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # No padding: every row's next token sits at position input_ids.shape[1], as Sequence.position.
        position = input_ids.shape[1]
        keys = torch.tensor([step_key(k, position) for k in self.keys], device=scores.device)
        return scores + gumbel_noise(keys, scores.shape[-1]).to(scores.dtype)


class _Steps:
    """A stopping criterion that never stops: it counts `generate`'s steps as the requests' progress."""

    def __init__(self, requests: list[Request]):
        self.requests = requests

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        stepped(self.requests)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class GenerateGenerator:
    """Equal-length batches through `model.generate`; one batch on the model at a time."""

    def __init__(self, model, tokenizer, sampling: SamplingConfig, batching: BatchingConfig):
        self.model = model
        self.sampling = sampling
        self.batching = batching
        self.budget = token_budget(batching, model)
        self.eos = sorted(eos_ids(tokenizer, model, sampling))  # sampling.stop_token_ids end rows too
        self.stopper = Stopper(tokenizer, set(self.eos), sampling.stop)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._lock = threading.Lock()

    def announce(self) -> AbstractContextManager:
        """Nothing to gather: batches only ever hold prompts of one length."""
        return nullcontext()

    def generate(self, requests: list[Request]) -> list[Completion]:
        """Complete every request (in request order), prompts of equal length batched together."""
        done: dict[int, Completion] = {}  # by position: ids need not be unique
        for i, request in enumerate(requests):  # never ignored silently: an error row each
            if (error := row_option_error(request)) is not None:
                done[i] = Completion.failed(request.id, error)
        requests_left = [i for i in range(len(requests)) if i not in done]
        samples = 1 if self.sampling.greedy else self.sampling.n
        order = sorted(requests_left, key=lambda i: len(requests[i].prompt_ids))
        for _length, same in groupby(order, key=lambda i: len(requests[i].prompt_ids)):
            group = list(same)
            members = [copy.copy(requests[i]) for i in group]  # own copies: one object per row
            rows = {id(m): i for m, i in zip(members, group, strict=True)}
            for batch in plan_batches(members, self.budget, self.batching.max_batch_size, samples):
                for request, completion in zip(batch, split_on_oom(self.run, batch), strict=True):
                    done[rows[id(request)]] = completion
        return [done[i] for i in range(len(requests))]

    def run(self, requests: list[Request]) -> list[Completion]:
        """Complete one batch of equal-length prompts (in request order) with `model.generate`."""
        seqs = expand(requests, self.sampling)
        with self._lock:
            tokens = self._generate(seqs)
        for seq, row in zip(seqs, tokens, strict=True):
            seq.tokens = row
        return self.stopper.completions(requests, seqs, self.sampling.n)

    @torch.inference_mode()
    def _generate(self, seqs: list[Sequence]) -> list[list[int]]:
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        ids = torch.tensor([s.request.prompt_ids for s in seqs], device=self.model.device)
        config = GenerationConfig(
            max_new_tokens=max(s.request.max_new_tokens for s in seqs),
            do_sample=False,
            num_beams=1,
            eos_token_id=self.eos or None,
            pad_token_id=self.pad_id,
        )
        processors = None
        # Counts each step of `generate` for the watchdog (a public hook: StoppingCriteria run per step).
        steps = StoppingCriteriaList([_Steps([s.request for s in seqs])])
        if not self.sampling.greedy:
            processors = LogitsProcessorList([*warpers(self.sampling), KeyedNoise([s.key for s in seqs])])
        # `generate` fills every setting our config leaves unset from `model.generation_config`
        # (generation/utils.py _prepare_generation_config), so a checkpoint's repetition penalty,
        # suppressed tokens or sampling defaults would apply here but not in the other strategies, which
        # follow only the job's sampling section. The model's own config is swapped out for the call
        # (under the lock: only this strategy runs the model).
        saved, self.model.generation_config = self.model.generation_config, GenerationConfig()
        try:
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=steps,
            )
        finally:
            self.model.generation_config = saved
        return out[:, ids.shape[1] :].tolist()

    def close(self) -> None:
        """Nothing to release: each batch's cache lives only inside `model.generate`."""
