"""transformers' continuous batching (its manager, per-request logits processors and paged cache) and
the calling convention between a model's attention layers and the attention functions."""

from __future__ import annotations

from typing import Any

# --- transformers: continuous batching ----------------------------------------------------------------


def manager_failure(manager) -> str | None:
    """The error that stopped a continuous batching manager's generation loop, if it recorded one.

    Why undocumented: `background_thread_status.fatal_error` is where the manager keeps it; the public
    API only fails the requests it held. Checked: transformers 5.23.0, 5.24.0."""
    status = getattr(manager, "background_thread_status", None)
    error = getattr(status, "fatal_error", None)
    return None if error is None else f"{type(error).__name__}: {error}"


def manager_accepting(manager) -> bool:
    """Whether a manager's running loop takes new requests (`background_thread_status`).

    Checked: transformers 5.23.0, 5.24.0."""
    status = getattr(manager, "background_thread_status", None)
    return manager.is_running() and (status is None or status.can_accept_new_requests() is None)


def manager_thread(manager):
    """The manager's generation thread (`_generation_thread`), to join it before a restart.

    Why private: `is_running()` says whether it lives but gives no way to wait for it to end.
    Checked: transformers 5.23.0, 5.24.0."""
    return getattr(manager, "_generation_thread", None)


def manager_cache_built(manager) -> bool:
    """Whether the generation thread built its batch processor (the paged KV cache) yet.

    Why undocumented: a manager stopped before that would build the cache after the stop; the public
    `stop()` does not wait for it. Checked: transformers 5.23.0, 5.24.0."""
    return getattr(manager, "batch_processor", None) is not None


def set_manager_processors(manager, processors) -> None:
    """Replace the manager's logits processor list (`manager.logit_processor`) with ours.

    Why undocumented: the manager builds its list from the GenerationConfig, which cannot carry a
    processor of our own (keyed Gumbel noise, runner.engine.sampling). Checked: transformers 5.23.0, 5.24.0."""
    manager.logit_processor = processors


def cb_processor_base():
    """transformers' base class for a per-request continuous batching logits processor, and the
    processor list class. Why undocumented: the per-request processor interface
    (`supported_kwargs`, `fill_defaults`, `prepare_tensor_args`, `tensors_required`) is internal to
    continuous batching. Checked: transformers 5.23.0, 5.24.0."""
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor,
        ContinuousBatchingLogitsProcessorList,
    )

    return ContinuousBatchingLogitsProcessor, ContinuousBatchingLogitsProcessorList


def request_processor_state(request) -> tuple[dict, int]:
    """A scheduled request's per-request processor kwargs and the position of its new token
    (`request.state.logit_processor_kwargs`, `request.state.position_offset`).

    Checked: transformers 5.23.0, 5.24.0."""
    return request.state.logit_processor_kwargs, request.state.position_offset


def per_request_processor(kwargs_types: dict[str, type], prepare, apply):
    """A continuous batching logits processor of our own with one int32 argument per request:
    `prepare(kwargs, position) -> int` for each request with a new token (its per-request kwargs,
    typed by `kwargs_types`, and the new token's position); `apply(scores, arguments) -> scores`
    (int64 arguments, one per row of `scores`; a request without the kwargs gets 0).

    Why undocumented: the per-request processor interface (`supported_kwargs`, `fill_defaults`,
    `prepare_tensor_args`, tensor arguments) is internal to continuous batching.
    Checked: transformers 5.23.0, 5.24.0."""
    import torch

    base, _ = cb_processor_base()

    class PerRequest(base):
        supported_kwargs = kwargs_types
        ignored_kwargs = ()

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(0)

        def prepare_tensor_args(self, requests_with_new_token) -> torch.Tensor:
            args = [prepare(*request_processor_state(r)) for r in requests_with_new_token]
            return torch.tensor(args, dtype=torch.int32)

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            return apply(scores, tensor_arg[: scores.size(0)].to(torch.int64))

    return PerRequest()


def per_request_processor_list(chain):
    """transformers' continuous batching processor list over `chain` (a LogitsProcessorList of its
    warpers and our `per_request_processor`s), per-request values on. Why undocumented: the list
    counts the tensor arguments only of the warpers it converted itself (`tensors_required`); ours
    add one each. Checked: transformers 5.23.0, 5.24.0."""
    base, processor_list = cb_processor_base()
    processors = processor_list(chain, per_request_processors=True)
    processors.tensors_required += sum(isinstance(p, base) for p in chain)
    return processors


_MATCHED = "_runner_prefix_tokens_matched"


def count_prefix_matches() -> None:
    """Make every `PagedAttentionCache` count the prompt tokens its prefix sharing took from cached
    blocks (`search_prefix_match`, wrapped once per process), for `prefix_tokens_matched`.

    Why undocumented: block sharing (`ContinuousBatchingConfig.allow_block_sharing`) is public, but
    how many tokens it saved is only the return value of the scheduler's internal call. On a version
    without the method nothing is counted. Checked: transformers 5.23.0, 5.24.0 (same signature)."""
    cache = paged_cache_class()
    search = getattr(cache, "search_prefix_match", None)
    if search is None or getattr(search, "_runner_counting", False):
        return

    def counting(self, request_id, prompt_ids):
        matched = search(self, request_id, prompt_ids)
        setattr(self, _MATCHED, getattr(self, _MATCHED, 0) + matched)
        return matched

    counting._runner_counting = True
    cache.search_prefix_match = counting


def prefix_tokens_matched(manager) -> int:
    """Prompt tokens the manager's current paged cache took from shared blocks (`count_prefix_matches`;
    `batch_processor.cache`). 0 before the cache is built and after the manager stopped.
    Checked: transformers 5.23.0, 5.24.0."""
    processor = getattr(manager, "batch_processor", None)
    return getattr(getattr(processor, "cache", None), _MATCHED, 0)


# --- transformers: attention functions and the paged cache ------------------------------------------


def attention_originals() -> dict[str, Any]:
    """transformers' own SDPA and paged-eager attention functions, which runner.engine.paged_attention
    wraps (`integrations.sdpa_attention.sdpa_attention_forward`, `integrations.eager_paged`).

    Why undocumented: `AttentionInterface.register` is public, but the functions it replaces are only
    importable from the integration modules. Checked: transformers 5.23.0, 5.24.0."""
    from transformers.integrations.eager_paged import eager_paged_attention_forward
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return {"sdpa": sdpa_attention_forward, "paged|eager": eager_paged_attention_forward}


def paged_cache_class():
    """transformers' `PagedAttentionCache` class (continuous batching's KV cache).

    Checked: transformers 5.23.0, 5.24.0."""
    from transformers.generation.continuous_batching.cache import PagedAttentionCache

    return PagedAttentionCache


def packed_call(cache, kwargs: dict) -> str | None:
    """How an attention call of a continuous batching step reaches us, or None for any other call.

    - 'update' (transformers <= 5.23): the attention function receives the `PagedAttentionCache` as
      `cache=` and must write this step's keys/values into it (`cache.update`) before reading them;
    - 'updated' (transformers >= 5.24): the decoder layer already called `cache.update`; the function
      receives the whole read keys/values and the packed layout in kwargs (`cu_seq_lens_q`,
      `cu_seq_lens_k` as a tensor, `read_index`/`write_index`), and no cache.
    A block-table call (flash decode with the cache inside the kernel) is neither: it stays with
    transformers. Why undocumented: the calling convention between the paged cache and attention
    functions is internal to continuous batching. Checked: transformers 5.23.0 ('update'), 5.24.0 ('updated')."""
    if kwargs.get("block_table") is not None:
        return None
    if cache is not None and isinstance(cache, paged_cache_class()):
        return "update"
    if cache is None and "cu_seq_lens_q" in kwargs and "read_index" in kwargs:
        import torch

        if isinstance(kwargs.get("cu_seq_lens_k"), torch.Tensor):
            return "updated"
    return None


def paged_layer_window(cache, layer_idx: int) -> int | None:
    """The sliding window of a layer's cache group in a `PagedAttentionCache` (None: full attention).

    Checked: transformers 5.23.0, 5.24.0 (`layer_to_allocator[i].sliding_window`)."""
    group = cache.layer_to_allocator[layer_idx]
    return getattr(group, "sliding_window", None)


def processor_keys(manager) -> set[str]:
    """The per-request processor arguments the manager's processor list takes (`logit_processor
    .supported_keys`): rows needing another one run elsewhere (runner.engine.routing).
    Checked: transformers 5.23.0, 5.24.0."""
    return set(getattr(manager.logit_processor, "supported_keys", {}))


def packed_lengths(kwargs: dict):
    """(cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k) of a packed continuous batching
    attention call: the cumulative query / key lengths of its sequences, as tensors, and the longest.
    Why undocumented: the packed layout's kwargs are internal to continuous batching.
    Checked: transformers 5.23.0, 5.24.0."""
    return (
        kwargs["cu_seq_lens_q"],
        kwargs["cu_seq_lens_k"],
        kwargs.get("max_length_q"),
        kwargs.get("max_length_k"),
    )


def paged_update(cache, module, key, value, kwargs: dict):
    """Write a layer's keys/values of this step into the paged cache and read the sequences' whole
    keys/values back (`PagedAttentionCache.update(..., layer_idx=, kwargs=)`, the 'update' convention
    of `packed_call`). Checked: transformers 5.23.0."""
    return cache.update(key_states=key, value_states=value, layer_idx=layer_index(module), kwargs=kwargs)


def layer_index(module) -> int:
    """An attention module's layer number (`module.layer_idx`), which indexes the caches.
    Why undocumented: every model's attention class sets it, no interface declares it.
    Checked: transformers 5.23.0, 5.24.0."""
    return module.layer_idx


ATTENTION_EXTRAS = ("softcap", "s_aux", "position_bias", "sliding_window")


def attention_extras(module, kwargs: dict) -> dict[str, Any]:
    """What an attention call asks besides causal softmax, by the names its layers pass:
    `sliding_window`, `softcap` (Gemma 2), `sinks` (`s_aux` or the module's `sinks`, GPT-OSS),
    `position_bias`; a value of None where the call has none.
    Why undocumented: these keyword arguments are how model files talk to attention functions;
    `AttentionInterface` declares none of them. Checked: transformers 5.23.0, 5.24.0."""
    sinks = kwargs.get("s_aux")
    return {
        "sliding_window": kwargs.get("sliding_window"),
        "softcap": kwargs.get("softcap"),
        "sinks": sinks if sinks is not None else getattr(module, "sinks", None),
        "position_bias": kwargs.get("position_bias"),
    }
