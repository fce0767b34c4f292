"""Padded static batching through transformers' own `model.generate`.

Rows are left-padded to the longest prompt of their (length-sorted) batch; each row is then cut at
its own limit, EOS or stop string, so the result equals generating that row alone.
"""

from __future__ import annotations

import zlib

import torch

from runner.config import BatchingConfig, SamplingConfig
from runner.engine.batching import plan_batches
from runner.engine.types import Completion, Request


def generation_config(sampling: SamplingConfig, tokenizer, max_new_tokens: int):
    """A transformers GenerationConfig for one call."""
    from transformers import GenerationConfig

    kwargs = dict(
        max_new_tokens=max_new_tokens,
        num_return_sequences=sampling.n,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if sampling.greedy:
        return GenerationConfig(do_sample=False, **kwargs)
    return GenerationConfig(
        do_sample=True,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k or None,
        **kwargs,
    )


def batch_seed(seed: int, requests: list[Request]) -> int:
    """A seed that depends on the config seed and the batch's rows, so reruns sample the same."""
    return (seed * 1_000_003 + zlib.crc32("|".join(r.id for r in requests).encode())) % 2**63


def left_pad(requests: list[Request], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask for a left-padded batch."""
    width = max(len(r.prompt_ids) for r in requests)
    ids = torch.full((len(requests), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(requests), width), dtype=torch.long)
    for i, r in enumerate(requests):
        ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids, dtype=torch.long)
        mask[i, width - len(r.prompt_ids) :] = 1
    return ids.to(device), mask.to(device)


def finish(tokens: list[int], limit: int, eos_ids: set[int]) -> tuple[list[int], str]:
    """Cut a generated row at EOS (kept out of the text) or at its own limit."""
    tokens = tokens[:limit]
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[:i], "stop"
    return tokens, "length"


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Text up to the earliest stop string (excluded); whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def eos_set(tokenizer, model) -> set[int]:
    ids = model.generation_config.eos_token_id if model.generation_config else None
    ids = ids if ids is not None else tokenizer.eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    return {i for i in ids if i is not None and i >= 0}


class PaddedGenerator:
    """Runs length-sorted batches through `model.generate` with left padding."""

    def __init__(self, model, tokenizer, sampling: SamplingConfig, batching: BatchingConfig):
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.batching = batching
        self.eos = eos_set(tokenizer, model)

    def run(self, requests: list[Request]) -> list[Completion]:
        """Complete requests in length-sorted batches cut by the token budget."""
        budget, rows = self.batching.token_budget, self.batching.max_batch_size
        done: list[Completion] = []
        for batch in plan_batches(requests, budget, rows, self.sampling.n):
            done.extend(self.run_batch(batch))
        return done

    @torch.inference_mode()
    def run_batch(self, requests: list[Request]) -> list[Completion]:
        """One generate call over a batch."""
        ids, mask = left_pad(requests, self.tokenizer.pad_token_id, self.model.device)
        limit = max(r.max_new_tokens for r in requests)
        config = generation_config(self.sampling, self.tokenizer, limit)
        if not self.sampling.greedy:
            torch.manual_seed(batch_seed(self.sampling.seed, requests))
        stop = {"stop_strings": self.sampling.stop, "tokenizer": self.tokenizer} if self.sampling.stop else {}
        out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config, **stop)
        new = out[:, ids.shape[1] :].tolist()
        n = self.sampling.n
        return [self._complete(r, new[i * n : (i + 1) * n]) for i, r in enumerate(requests)]

    def _complete(self, request: Request, samples: list[list[int]]) -> Completion:
        done = Completion(id=request.id)
        for tokens in samples:
            tokens, reason = finish(tokens, request.max_new_tokens, self.eos)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            text, stopped = cut_at_stop(text, self.sampling.stop)
            if stopped:
                tokens = self._tokens_through_stop(tokens)
            done.token_ids.append(tokens)
            done.texts.append(text)
            done.finish_reasons.append("stop" if stopped else reason)
        return done

    def _tokens_through_stop(self, tokens: list[int]) -> list[int]:
        """The shortest prefix whose text contains a stop string (what was really generated)."""
        for k in range(1, len(tokens) + 1):
            if cut_at_stop(self.tokenizer.decode(tokens[:k], skip_special_tokens=True), self.sampling.stop)[
                1
            ]:
                return tokens[:k]
        return tokens
