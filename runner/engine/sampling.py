"""Choosing the next token: greedy, or sampled with noise that depends only on the row, never on the batch.

Sampling draws with the Gumbel-max trick, ``argmax(warped_logits + gumbel)``, which is an exact draw from
``softmax(warped_logits)``. The Gumbel noise comes from a counter-based hash of a 32-bit key per row and
step (see `step_key`), not from a global random generator: a row samples the same tokens whichever batch
it lands in, whichever rows finish around it and whichever strategy runs it, so reruns with the same seed
are reproducible even when Ray hands rows to replicas in a different order.

Temperature, top-k and top-p are transformers' own logits warpers (the continuous strategy uses their
continuous-batching versions); only the noise is ours.
"""

from __future__ import annotations

import zlib

import torch

from runner.config import SamplingConfig

_MASK32 = 0xFFFFFFFF


def _mul32(h: torch.Tensor | int, c: int) -> torch.Tensor | int:
    """(h * c) mod 2**32 for 0 <= h < 2**32, split in 16-bit halves so int64 never overflows."""
    return (h * (c & 0xFFFF) + (((h * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def _fmix32(h: torch.Tensor | int) -> torch.Tensor | int:
    """MurmurHash3's finaliser: a cheap 32-bit mix where every input bit flips about half the output bits."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def row_key(seed: int, request_id: str, sample: int) -> int:
    """A 32-bit key naming one sample of one request under one seed."""
    return zlib.crc32(f"{seed}\x1f{request_id}\x1f{sample}".encode())


def step_key(key: int, position: int) -> int:
    """The key of the token a row draws at `position` (its prompt length + tokens generated so far)."""
    return _fmix32((key ^ _mul32(position & _MASK32, 0x9E3779B9)) & _MASK32)


def gumbel_noise(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """Standard Gumbel noise [rows, vocab], a pure function of each row's 32-bit key (any device)."""
    keys = keys.to(torch.int64).unsqueeze(-1) & _MASK32
    index = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    h = _fmix32((keys + _mul32(index, 0x632BE5AB)) & _MASK32)
    h = _fmix32(h ^ keys)
    uniform = ((h >> 8).to(torch.float32) + 0.5) / float(1 << 24)
    return -torch.log(-torch.log(uniform))


def warpers(sampling: SamplingConfig) -> list:
    """transformers' temperature / top-k / top-p warpers for a sampling config (none when greedy)."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    if sampling.greedy:
        return []
    chain = [TemperatureLogitsWarper(sampling.temperature)]
    if sampling.top_k:
        chain.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        chain.append(TopPLogitsWarper(sampling.top_p))
    return chain


class Sampler:
    """Picks one token per row from its logits: argmax when greedy, else a keyed Gumbel-max draw."""

    def __init__(self, sampling: SamplingConfig):
        self.greedy = sampling.greedy
        self.warpers = warpers(sampling)

    def choose(self, logits: torch.Tensor, keys: list[int]) -> torch.Tensor:
        """Next token ids [rows] from float logits [rows, vocab]; keys from `step_key`, one per row."""
        if self.greedy:
            return logits.argmax(dim=-1)
        scores = logits
        for warp in self.warpers:
            scores = warp(None, scores)
        noise = gumbel_noise(torch.tensor(keys, device=logits.device), logits.shape[-1])
        return (scores + noise).argmax(dim=-1)
