"""Logits processors: per-row ones for the padded strategy (penalties, grammar masks), and the list
for transformers' continuous batching (its warpers plus our keyed Gumbel noise).

Padded (`RowProcessors`): repetition penalty is transformers' `RepetitionPenaltyLogitsProcessor` (CTRL,
over prompt + generated tokens, as `generate` and vLLM apply it); presence / frequency penalties follow
OpenAI's definition (over generated tokens only: logit -= presence * [count > 0] + frequency * count),
for which transformers has no processor, so they are ours; grammar masks are xgrammar's
(runner.engine.constraints). They need each row's token history, so they run per row on the host.

Continuous:

The manager samples with `torch.multinomial` on one global generator, so which token a row draws
depends on which other rows share its step: not reproducible in a batch job. We build the manager's
processor list ourselves instead: transformers' per-request temperature / top-k / top-p warpers, then
`keyed_gumbel`, which adds the same keyed noise the padded strategy uses; the manager (do_sample off)
takes the argmax, which is then an exact, reproducible sample. All of it is tensor code, so it also
runs inside the manager's CUDA graphs.
"""

from __future__ import annotations

import torch

from runner import compat
from runner.config import SamplingConfig
from runner.engine.sampling import gumbel_noise, step_key, warpers


def penalties_used(sampling: SamplingConfig) -> bool:
    """Whether the job uses any penalty (they need every row's token history)."""
    return (
        sampling.repetition_penalty != 1.0
        or sampling.presence_penalty != 0.0
        or sampling.frequency_penalty != 0.0
    )


def own_penalties(request) -> bool:
    """Whether a request sets its own presence / frequency penalty (an OpenAI batch request's body)."""
    own = request.sampling
    return own is not None and bool(own.presence_penalty or own.frequency_penalty)


def additive_penalties(sampling: SamplingConfig, request) -> tuple[float, float]:
    """(presence, frequency) for one request: its own values, else the job's."""
    own = request.sampling
    if own is None:
        return sampling.presence_penalty, sampling.frequency_penalty
    return own.own("presence_penalty", sampling.presence_penalty), own.own(
        "frequency_penalty", sampling.frequency_penalty
    )


class RowProcessors:
    """The padded strategy's per-row logits processors: penalties, then grammar masks."""

    def __init__(self, sampling: SamplingConfig, tokenizer, stop_ids: set[int], model):
        self.sampling = sampling
        self.penalties = penalties_used(sampling)
        self._grammar_args = (tokenizer, stop_ids, model)
        self._grammars = None

    @property
    def grammars(self):
        """xgrammar is imported and the vocabulary read on the first constrained row only."""
        if self._grammars is None:
            from runner.engine.constraints import Grammars, vocab_size

            tokenizer, stop_ids, model = self._grammar_args
            self._grammars = Grammars(tokenizer, stop_ids, vocab_size(model))
        return self._grammars

    def apply(self, logits: torch.Tensor, seqs: list) -> torch.Tensor:
        """Logits after the processors each row uses (the same tensor when none applies)."""
        if self.penalties or any(own_penalties(s.request) for s in seqs):
            logits = torch.cat([self._penalize(logits[i : i + 1], s) for i, s in enumerate(seqs)])
        if any(s.request.constraint is not None for s in seqs):
            logits = self.grammars.mask(logits, seqs)
        return logits

    def accept(self, seqs: list, chosen: torch.Tensor) -> None:
        """Tell stateful processors (grammar matchers) which token each row drew."""
        if self._grammars is not None:
            self._grammars.accept(seqs, chosen)

    def _penalize(self, scores: torch.Tensor, seq) -> torch.Tensor:
        from transformers import RepetitionPenaltyLogitsProcessor

        s = self.sampling
        if s.repetition_penalty != 1.0:
            seen = torch.tensor([seq.request.prompt_ids + seq.tokens], device=scores.device)
            scores = RepetitionPenaltyLogitsProcessor(s.repetition_penalty)(seen, scores)
        presence, frequency = additive_penalties(s, seq.request)
        if (presence or frequency) and seq.tokens:
            counts = torch.bincount(torch.tensor(seq.tokens), minlength=scores.shape[-1]).to(scores)
            scores = scores - frequency * counts - presence * (counts > 0).to(scores)
        return scores


def _as_int32(key: int) -> int:
    return key - (1 << 32) if key >= (1 << 31) else key


def keyed_gumbel():
    """A per-request continuous batching processor adding Gumbel noise keyed by (request sample key,
    token position): see runner.engine.sampling."""

    def key(kwargs: dict, position: int) -> int:
        # position_offset was just advanced past this step's query: it is the new token's position.
        # A row whose own temperature is 0 (greedy) gets key 0 = no noise (its warpers are neutral).
        return 0 if kwargs.get("greedy") else _as_int32(step_key(kwargs.get("sample_key", 0), position))

    def add_noise(scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return scores + gumbel_noise(keys, scores.size(-1)) * (keys != 0).unsqueeze(-1)

    return compat.per_request_processor({"sample_key": int, "greedy": bool}, key, add_noise)


def sampling_processors(sampling: SamplingConfig):
    """The continuous batching processor list for a sampling config (warpers, then keyed noise)."""
    from transformers import LogitsProcessorList

    return compat.per_request_processor_list(LogitsProcessorList([*warpers(sampling), keyed_gumbel()]))


def row_kwargs(sampling: SamplingConfig, seq) -> dict:
    """The manager's per-request processor arguments for one sequence: its sampling key, and its own
    temperature / top_p when it has them (a greedy row: neutral warpers and no noise)."""
    from runner.engine.sampling import row_params

    kwargs: dict = {"sample_key": seq.key}
    if seq.request.sampling is None:
        return kwargs
    params = row_params(sampling, seq.request)
    if params.greedy:
        kwargs["greedy"] = True
    kwargs["temperature"] = 1.0 if params.greedy else float(params.temperature)
    if sampling.top_p < 1.0:  # the manager has a top-p warper only then (else such rows go to padded)
        kwargs["top_p"] = 1.0 if params.greedy else float(params.top_p)
    return kwargs
