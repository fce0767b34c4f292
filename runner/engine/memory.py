"""Device memory: how many token positions a replica may hold, and what to do when it runs out anyway.

The token budget bounds the KV cache plus activations of the rows in flight. Unless the config sets it,
it is derived from the free device memory after the model is loaded, so a 1B model on an 80 GB GPU
batches far wider than an 8B one on a 24 GB GPU without anyone tuning a number. The estimate can still
be wrong (fragmentation, an unusually long prompt), so `split_on_oom` wraps every strategy: a batch that
raises a CUDA out-of-memory error is split in halves and retried, down to one row; a single row that
still does not fit becomes an error row instead of failing the Ray task and the rows around it.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable

import torch

from runner.config import BatchingConfig
from runner.engine.types import Completion, Request
from runner.errors import first_line

log = logging.getLogger(__name__)

CPU_TOKEN_BUDGET = 65536  # on CPU memory is rarely the limit; compute is, and max_batch_size bounds it
MIN_TOKEN_BUDGET = 2048


def bytes_per_token(model) -> int:
    """KV cache plus transient activations of one token position, in bytes (an upper-side estimate)."""
    cfg = model.config.get_text_config()
    # A state-space model (Mamba) names no attention heads: its per-token state is counted as one
    # hidden-size key and value per layer, an upper side for its fixed-size recurrent state.
    heads = getattr(cfg, "num_attention_heads", None) or 1
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    width = torch.finfo(model.dtype).bits // 8 if model.dtype.is_floating_point else 2
    kv = 2 * cfg.num_hidden_layers * kv_heads * head_dim * width
    intermediate = getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)
    activations = (4 * cfg.hidden_size + 3 * intermediate) * width
    return kv + activations


def token_budget(batching: BatchingConfig, model) -> int:
    """Token positions a replica may keep in flight: the config's, else derived from free device memory."""
    if batching.token_budget is not None:
        return batching.token_budget
    device = model.device
    if device.type != "cuda":
        return CPU_TOKEN_BUDGET
    free, _total = torch.cuda.mem_get_info(device)
    budget = int(free * batching.memory_fraction) // bytes_per_token(model)
    log.info(
        "token budget %d positions (%.1f GiB free x %.2f)", budget, free / 2**30, batching.memory_fraction
    )
    return max(budget, MIN_TOKEN_BUDGET)


def release_memory() -> None:
    """Give cached blocks back after an out-of-memory error, so the retry starts from a clean pool."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def split_on_oom(
    run: Callable[[list[Request]], list[Completion]], requests: list[Request]
) -> list[Completion]:
    """`run(requests)`, splitting the batch in halves on out-of-memory until single rows; never drops a row."""
    failure = None
    try:
        return run(requests)
    except torch.OutOfMemoryError as err:
        # Keep only the message: the traceback holds the failed batch's tensors alive.
        failure = first_line(err, "out of memory")
    release_memory()
    if len(requests) == 1:
        log.error("request %s does not fit in memory even alone: %s", requests[0].id, failure)
        return [Completion.failed(requests[0].id, f"out of memory even as a batch of one: {failure}")]
    half = len(requests) // 2
    log.warning("out of memory on %d rows: retrying as %d + %d", len(requests), half, len(requests) - half)
    return split_on_oom(run, requests[:half]) + split_on_oom(run, requests[half:])
