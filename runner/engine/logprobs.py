"""Log-probabilities of generated tokens (with the top-K alternatives) and of prompt tokens.

Definition: the model's raw next-token distribution, `log_softmax` of its logits in float32, before
penalties, grammar masks, temperature, top-k / top-p / min-p and the sampling noise (vLLM's default,
"raw logprobs"). They describe what the model thinks of the text, whatever decoding produced it, so they
are the same for every strategy, batch and sampling setting.

They are computed after generation by one teacher-forced forward pass over prompt + generated tokens per
sample (with the row's adapter): exactly "a plain forward pass of the same model", the definition users
check against, and independent of how the strategy computed the tokens (transformers' continuous
manager exposes only the chosen token's probability after its processors). Cost: one prefill-sized
forward per sample, paid only when `sampling.logprobs` or `sampling.prompt_logprobs` is set.
"""

from __future__ import annotations

import torch

from runner.config import SamplingConfig
from runner.engine import adapters
from runner.engine.forward import ModelCall
from runner.engine.types import Completion, Request, TokenLogprob

CHUNK = (
    512  # positions per log_softmax: a [positions, vocab] float32 block stays small for large vocabularies
)


def wanted(sampling: SamplingConfig, requests: list[Request] = ()) -> bool:
    """Whether the job, or any of `requests` (its own `RowSampling.logprobs`), asks for logprobs."""
    own = any(r.sampling is not None and r.sampling.logprobs is not None for r in requests)
    return own or sampling.logprobs is not None or sampling.prompt_logprobs


def top_k(sampling: SamplingConfig, request: Request) -> int | None:
    """Alternatives per generated token for one request: its own, else the job's (None: no logprobs)."""
    return request.sampling.own("logprobs", sampling.logprobs) if request.sampling else sampling.logprobs


def attach(model, requests: list[Request], completions: list[Completion], sampling: SamplingConfig) -> None:
    """Fill `logprobs` / `prompt_logprobs` of each successful completion (in place)."""
    for request, completion in zip(requests, completions, strict=True):
        k = top_k(sampling, request)
        if completion.error is not None or (k is None and not sampling.prompt_logprobs):
            continue
        whole = sampling.prompt_logprobs
        with adapters.active(model, request.adapter):
            # n greedy samples are one sequence repeated: scored once.
            unique = {tuple(t): None for t in completion.token_ids}
            for tokens in unique:
                unique[tokens] = _score(model, request.prompt_ids, list(tokens), whole)
        scored = [unique[tuple(t)] for t in completion.token_ids]
        if k is not None:
            completion.logprobs = [
                _generated(logp, tokens, k) for logp, tokens in zip(scored, completion.token_ids, strict=True)
            ]
        if sampling.prompt_logprobs:
            completion.prompt_logprobs = _prompt(scored[0], request.prompt_ids)


@torch.inference_mode()
def _score(model, prompt: list[int], tokens: list[int], whole: bool) -> torch.Tensor:
    """log_softmax rows predicting each generated token (whole: each token after the first) [rows, vocab]."""
    ids = torch.tensor([prompt + tokens], device=model.device)
    keep = ids.shape[1] if whole else len(tokens) + 1
    # A model whose forward takes no `logits_to_keep` computes all positions: the last `keep` are cut.
    logits = ModelCall(model).logits(ids, keep=keep)[0, -keep:-1]
    return torch.cat([torch.log_softmax(part.float(), dim=-1) for part in logits.split(CHUNK)]).cpu()


def _generated(
    logp: torch.Tensor, tokens: list[int], k: int
) -> list[tuple[TokenLogprob, list[TokenLogprob]]]:
    rows = logp[-len(tokens) :] if tokens else logp[:0]
    chosen = rows.gather(1, torch.tensor(tokens, dtype=torch.long).unsqueeze(1)).squeeze(1).tolist()
    top_values, top_ids = rows.topk(k, dim=-1) if k else (rows[:, :0], rows[:, :0].long())
    return [
        (TokenLogprob(t, c), [TokenLogprob(i, v) for i, v in zip(ids, values, strict=True)])
        for t, c, ids, values in zip(tokens, chosen, top_ids.tolist(), top_values.tolist(), strict=True)
    ]


def _prompt(logp: torch.Tensor, prompt: list[int]) -> list[float | None]:
    rows = logp[: len(prompt) - 1]
    targets = torch.tensor(prompt[1:], dtype=torch.long).unsqueeze(1)
    return [None, *rows.gather(1, targets).squeeze(1).tolist()]
