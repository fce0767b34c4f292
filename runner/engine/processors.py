"""Logits processors for transformers' continuous batching: its warpers plus our keyed Gumbel noise.

The manager samples with `torch.multinomial` on one global generator, so which token a row draws
depends on which other rows share its step: not reproducible in a batch job. We build the manager's
processor list ourselves instead: transformers' per-request temperature / top-k / top-p warpers, then
`KeyedGumbel`, which adds the same keyed noise the padded strategy uses; the manager (do_sample off)
takes the argmax, which is then an exact, reproducible sample. All of it is tensor code, so it also
runs inside the manager's CUDA graphs.
"""

from __future__ import annotations

import torch

from runner.config import SamplingConfig
from runner.engine.sampling import gumbel_noise, step_key, warpers


def _as_int32(key: int) -> int:
    return key - (1 << 32) if key >= (1 << 31) else key


def _keyed_gumbel_class():
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor,
    )

    class KeyedGumbel(ContinuousBatchingLogitsProcessor):
        """Adds Gumbel noise keyed by (request sample key, token position): see runner.engine.sampling."""

        supported_kwargs = {"sample_key": int}
        ignored_kwargs = ()

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(0)

        def prepare_tensor_args(self, requests_with_new_token) -> torch.Tensor:
            # position_offset was just advanced past this step's query: it is the new token's position.
            keys = [
                step_key(r.state.logit_processor_kwargs.get("sample_key", 0), r.state.position_offset)
                for r in requests_with_new_token
            ]
            return torch.tensor([_as_int32(k) for k in keys], dtype=torch.int32)

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            keys = tensor_arg[: scores.size(0)].to(torch.int64)
            return scores + gumbel_noise(keys, scores.size(-1))

    return KeyedGumbel


def sampling_processors(sampling: SamplingConfig):
    """The continuous batching processor list for a sampling config (warpers, then keyed noise)."""
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessorList,
    )
    from transformers.generation.logits_process import LogitsProcessorList

    chain = LogitsProcessorList([*warpers(sampling), _keyed_gumbel_class()()])
    processors = ContinuousBatchingLogitsProcessorList(chain, per_request_processors=True)
    # The list only counts the warpers it converted itself; our processor needs its own argument row.
    processors.tensors_required += 1
    return processors
