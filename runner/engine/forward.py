"""Calling the model: the one place that knows how a forward pass is spelled.

Generation (the padded decode loop and its cache layouts), scoring and logprobs all run the model
through `ModelCall`; it owns what differs between architectures and transformers versions: whether
the forward takes `logits_to_keep` (Bloom and GPT-J do not) and the name of the cache argument
(transformers 5.24 renamed `past_key_values` to `cache`). `left_pad` and `prefill` are the padded
layout's prompt pass, written once for the plain, shared-prefix and cascade layouts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F

from runner.engine.kv_cache import full_cache

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values) [rows, kv_heads, columns, head_dim]
# (ids, attention mask, position ids, cache) -> float logits of each row's last position
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, object], torch.Tensor]


def forward_takes(model, argument: str) -> bool:
    """Whether the model's forward accepts `argument`: not every architecture's takes `position_ids`
    or `logits_to_keep` (Bloom, GPT-J, ...)."""
    return argument in inspect.signature(model.forward).parameters


def cache_argument(model) -> str:
    """The name the model's forward takes its KV cache by: transformers 5.24 renamed `past_key_values`
    to `cache` (the old name warns, and goes in 5.40)."""
    return "cache" if forward_takes(model, "cache") else "past_key_values"


class ModelCall:
    """Runs one loaded model's forward pass, spelled the way this model and transformers take it."""

    def __init__(self, model):
        self.model = model
        self.keeps = forward_takes(model, "logits_to_keep")  # can compute only the last positions
        self._cache_name = cache_argument(model)

    def logits(self, ids, mask=None, positions=None, cache=None, keep: int | None = None) -> torch.Tensor:
        """The model's logits [rows, positions, vocab]: the last `keep` positions where the forward
        can compute only those (all of them where it cannot: the caller offsets by `keeps`)."""
        kwargs = {"use_cache": cache is not None}
        if mask is not None:
            kwargs["attention_mask"] = mask
        if positions is not None:
            kwargs["position_ids"] = positions
        if cache is not None:
            kwargs[self._cache_name] = cache
        if keep is not None and self.keeps:
            # An int (keep the last K positions) means the same to every model that takes it; an index
            # tensor would be read as negative offsets by models that only expect an int.
            kwargs["logits_to_keep"] = keep
        return self.model(input_ids=ids, **kwargs).logits

    def last(self, ids, mask, positions, cache) -> torch.Tensor:
        """Float logits of each row's last position [rows, vocab] (a `Forward`)."""
        return self.logits(ids, mask, positions, cache, keep=1)[:, -1, :].float()

    def counting(self, progress) -> Forward:
        """`last`, counting a step on `progress` (the watchdog's signal) after each call."""

        def forward(ids, mask, positions, cache) -> torch.Tensor:
            logits = self.last(ids, mask, positions, cache)
            if progress is not None:
                progress.step()
            return logits

        return forward


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [rows, longest] with every prompt aligned to the right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[i, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def prefill(
    model,
    forward: Forward,
    prompts: list[list[int]],
    pad_id: int,
    width: int,
    skip: int = 0,
    offset: int = 0,
    cached: KV | None = None,
) -> tuple[torch.Tensor, KV]:
    """One left-padded prompt pass: (logits of each row's last position, the rows' (keys, values) per
    layer left-padded to `width` columns).

    `skip`: the first columns are already in `cached` (the copy layout: a shared prefix shifted into
    each row), only the rest is computed; `offset`: the prompts continue a prefix that is not in
    their cache (the cascade layout: positions start after it)."""
    ids, mask = left_pad(prompts, pad_id, model.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0) + offset  # a row's positions start at its first token
    cache = full_cache(model.config)
    for layer, (keys, values) in zip(cache.layers, cached or [], strict=False):
        layer.update(keys, values)
    logits = forward(ids[:, skip:], mask, positions[:, skip:], cache)
    pad = width - ids.shape[1]
    return logits, [(_left(layer.keys, pad), _left(layer.values, pad)) for layer in cache.layers]


def _left(tensor: torch.Tensor, pad: int) -> torch.Tensor:
    return F.pad(tensor, (0, 0, pad, 0)) if pad else tensor
