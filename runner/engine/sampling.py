"""Choosing the next token: greedy, or sampled with noise that depends only on the row, never on the batch.

Sampling draws with the Gumbel-max trick, ``argmax(warped_logits + gumbel)``, which is an exact draw from
``softmax(warped_logits)``. The Gumbel noise comes from a counter-based hash of a 32-bit key per row and
step (see `step_key`), not from a global random generator: a row samples the same tokens whichever batch
it lands in, whichever rows finish around it and whichever strategy runs it, so reruns with the same seed
are reproducible even when Ray hands rows to replicas in a different order.

Temperature, top-k, top-p and min-p are transformers' own logits warpers (the continuous strategy uses
their continuous-batching versions); only the noise is ours. A row's own seed, temperature and top_p
(`Request.sampling`) override the job's for that row.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from functools import lru_cache

import torch

from runner.config import SamplingConfig
from runner.engine.types import Request, RowSampling

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
    """The key of the token a row draws at `position` (its prompt length + tokens generated so far).

    Never 0: the continuous strategy's noise processor reads key 0 as "a greedy row, no noise"."""
    return _fmix32((key ^ _mul32(position & _MASK32, 0x9E3779B9)) & _MASK32) or 1


def gumbel_noise(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """Standard Gumbel noise [rows, vocab], a pure function of each row's 32-bit key (any device)."""
    keys = keys.to(torch.int64).unsqueeze(-1) & _MASK32
    index = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    h = _fmix32((keys + _mul32(index, 0x632BE5AB)) & _MASK32)
    h = _fmix32(h ^ keys)
    # float64: in float32 the largest uniform, (2**24 - 0.5) / 2**24, rounds to 1.0 and its noise to +inf,
    # which made that token win whatever its probability, masked or filtered (once per 2**24 draws: with
    # a 128k vocabulary, ~1 step in 130).
    uniform = ((h >> 8).to(torch.float64) + 0.5) / float(1 << 24)
    return (-torch.log(-torch.log(uniform))).to(torch.float32)


@dataclass(frozen=True)
class Params:
    """The sampling values one row draws with: the job's, overridden by the row's own (RowSampling)."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float
    seed: int

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def job_params(sampling: SamplingConfig) -> Params:
    """The job's sampling values (rows without their own)."""
    return Params(sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p, sampling.seed)


def row_params(sampling: SamplingConfig, request: Request) -> Params:
    """The job's sampling values with the row's overrides applied."""
    own = request.sampling or RowSampling()
    overrides = {"temperature": own.temperature, "top_p": own.top_p, "seed": own.seed}
    return replace(job_params(sampling), **{k: v for k, v in overrides.items() if v is not None})


@lru_cache(maxsize=256)
def params_warpers(params: Params) -> tuple:
    """transformers' warpers for one set of values, in `generate`'s order (none when greedy)."""
    from transformers import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    if params.greedy:
        return ()
    chain = [TemperatureLogitsWarper(params.temperature)]
    if params.top_k:
        chain.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        chain.append(TopPLogitsWarper(params.top_p))
    if params.min_p > 0:
        chain.append(MinPLogitsWarper(params.min_p))
    return tuple(chain)


def warpers(sampling: SamplingConfig) -> list:
    """transformers' temperature / top-k / top-p / min-p warpers for a sampling config (none when greedy)."""
    return list(params_warpers(job_params(sampling)))


def warp(scores: torch.Tensor, params: Params) -> torch.Tensor:
    """Scores after the warpers of `params` (rows [n, vocab])."""
    for warper in params_warpers(params):
        scores = warper(None, scores)
    return scores


class Sampler:
    """Picks one token per row from its logits: argmax when greedy, else a keyed Gumbel-max draw.

    Before that, the row processors (penalties, grammar masks; runner.engine.processors) change the
    logits of the rows that use them; rows with their own temperature / top_p are warped in groups of
    equal values. A batch that uses none of it takes the same path as a job without these options.
    """

    def __init__(self, sampling: SamplingConfig, row_processors=None):
        self.sampling = sampling
        self.greedy = sampling.greedy
        self.params = job_params(sampling)
        self.row_processors = row_processors

    def choose(self, logits: torch.Tensor, keys: list[int]) -> torch.Tensor:
        """Next token ids [rows] from float logits [rows, vocab], every row with the job's values; keys
        from `step_key`, one per row."""
        if self.greedy:
            return logits.argmax(dim=-1)
        scores = warp(logits, self.params)
        noise = gumbel_noise(torch.tensor(keys, device=logits.device), logits.shape[-1])
        return (scores + noise).argmax(dim=-1)

    def choose_rows(self, logits: torch.Tensor, seqs: list) -> torch.Tensor:
        """Next token ids for `seqs` (runner.engine.sequence), with their processors and own values."""
        if self.row_processors is not None:
            logits = self.row_processors.apply(logits, seqs)
        if any(s.request.sampling is not None for s in seqs):
            chosen = self._per_row(logits, seqs)
        else:
            chosen = self.choose(logits, [] if self.greedy else [s.next_key() for s in seqs])
        if self.row_processors is not None:
            self.row_processors.accept(seqs, chosen)
        return chosen

    def _per_row(self, logits: torch.Tensor, seqs: list) -> torch.Tensor:
        """Rows warped in groups of equal values; noise only on sampled rows."""
        params = [row_params(self.sampling, s.request) for s in seqs]
        scores = logits.clone()
        groups: dict[Params, list[int]] = {}
        for i, p in enumerate(params):
            if not p.greedy:
                groups.setdefault(p, []).append(i)
        if not groups:
            return logits.argmax(dim=-1)
        for p, rows in groups.items():
            index = torch.tensor(rows, device=logits.device)
            scores[index] = warp(logits[index], p)
        sampled = [i for rows in groups.values() for i in rows]
        keys = torch.tensor([seqs[i].next_key() for i in sampled], device=logits.device)
        index = torch.tensor(sampled, device=logits.device)
        scores[index] += gumbel_noise(keys, logits.shape[-1])
        return scores.argmax(dim=-1)
