"""Every use of a library's private or undocumented API, in one place.

The stack this project runs on (transformers, accelerate, ray, peft, xgrammar, bitsandbytes, torch)
releases every few weeks, and a private name can change in any of them (transformers 5.24 changed
`ContinuousBatchingManager._run_generation_loop`'s signature and stopped passing the paged cache to
attention functions, which broke this project's continuous strategy at once). So each use below says
what it needs, why there is no public way, and the versions it was checked on; tests/test_compat.py
exercises every one and fails naming the API and the installed version when it stops behaving.
Everywhere else the code uses public APIs only. `CHECKED` is what the last lock was tested with
(constraints.txt); `scripts/check_latest.sh` runs the same tests on the newest releases.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

log = logging.getLogger(__name__)

# Versions every function below was checked on (the lock and the newest release of the day).
CHECKED = {
    "transformers": ("5.23.0", "5.24.0"),
    "peft": ("0.21.2",),
    "ray": ("2.60.0",),
    "torch": ("2.13.0",),
    "xgrammar": ("0.2.8", "0.2.9"),
}


def version(package: str) -> str:
    """The installed version of a distribution, or 'not installed'."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions_line(*packages: str) -> str:
    """'transformers 5.24.0, torch 2.13.0': for error lines that name the library behind a failure."""
    return ", ".join(f"{p} {version(p)}" for p in packages)


def _release(text: str) -> tuple[int, ...]:
    """(5, 24, 0) of '5.24.0', '5.24.0rc1', '2.13.0+cpu': the release numbers, pre-release tags dropped."""
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = piece[: len(piece) - len(piece.lstrip("0123456789"))]
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break
    return tuple(parts)


def at_least(package: str, minimum: str) -> bool:
    """Whether the installed `package` is `minimum` or newer (False when it is not installed)."""
    installed = version(package)
    return installed != "not installed" and _release(installed) >= _release(minimum)


# --- transformers: model classes and their declared capabilities -------------------------------------


def attn_implementation(model_or_config) -> str:
    """The attention implementation a loaded model runs (`config._attn_implementation`).

    Why private: transformers exposes a setter (`set_attn_implementation`) but no getter; every model
    file reads this attribute. Checked: transformers 5.23.0, 5.24.0."""
    config = getattr(model_or_config, "config", model_or_config)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def model_flag(model_or_class, name: str, default: Any = False) -> Any:
    """A capability a model class declares as a private class attribute: `_supports_flash_attn`,
    `_supports_sdpa`, `_supports_attention_backend`, `_is_stateful`, `_compatible_flash_implementations`,
    `_supports_default_dynamic_cache` (a method).

    Why private: these are how transformers itself decides what a class can run
    (modeling_utils._check_and_adjust_attn_implementation, generation/utils.py); there is no public
    query. Checked: transformers 5.23.0, 5.24.0."""
    if not name.startswith("_"):
        raise ValueError(f"model_flag reads private class flags only, not {name!r}")
    return getattr(model_or_class, name, default)


def causal_lm_class(config):
    """The class AutoModelForCausalLM would instantiate for `config`, without loading weights.

    Why private: `auto_factory._get_model_class` + `_model_mapping` is the lookup from_pretrained does;
    the public `AutoModelForCausalLM.from_config` builds the model (allocating its weights).
    Checked: transformers 5.23.0, 5.24.0. Raises KeyError for a config that is not a causal LM."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.auto_factory import _get_model_class

    return _get_model_class(config, AutoModelForCausalLM._model_mapping)


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


# --- transformers: attention functions for the paged cache ------------------------------------------


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


# --- transformers + peft: adapters ------------------------------------------------------------------


def has_loaded_adapters(model) -> bool:
    """Whether adapters were loaded into a transformers model (`_hf_peft_config_loaded`).

    Why private: transformers' PEFT integration keeps no public flag. Checked: transformers 5.23.0, 5.24.0."""
    return bool(getattr(model, "_hf_peft_config_loaded", False))


def adapter_switching_problem() -> str | None:
    """Why transformers' adapter switching (load_adapter / set_adapter) cannot run with the installed
    peft, as one line, or None when it can.

    Why undocumented: transformers states its peft floor only as `integrations.peft.MIN_PEFT_VERSION`
    and raises on the first call; we want to refuse a multi-adapter job at start, naming both
    versions. transformers 5.24.0 needs peft >= 0.22.0, unreleased on 2026-12-02 (peft 0.21.2 is the
    newest). Checked: transformers 5.23.0 (floor 0.20.0), 5.24.0 (0.22.0)."""
    try:
        from transformers.integrations.peft import MIN_PEFT_VERSION
    except ImportError:
        return None
    if version("peft") == "not installed":
        return "peft is not installed"
    if at_least("peft", MIN_PEFT_VERSION):
        return None
    return (
        f"transformers {version('transformers')} switches adapters only with peft >= {MIN_PEFT_VERSION}, "
        f"installed peft {version('peft')} (install the project's lock: pip install -c constraints.txt ...)"
    )


# --- ray -----------------------------------------------------------------------------------------------


def ray_actor_table() -> dict | None:
    """This job's actors from Ray's actor table in the GCS ({actor id: info}), or None when Ray cannot
    say (Ray Client, a changed private API).

    Why private: `ray._private.state.actors` counts every restart (`NumRestarts`) of an actor; the public
    state API (`ray.util.state.list_actors`) needs the dashboard, which a local Ray here runs without.
    Checked: ray 2.60.0. Every failure, including a missing key, is guarded: the caller treats None as unknown."""
    try:
        import ray
        from ray._private import state

        job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
        actors = state.actors(job_id=job)
        return {
            key: {"class": str(info["ActorClassName"]), "restarts": int(info["NumRestarts"])}
            for key, info in actors.items()
        }
    except Exception as err:  # noqa: BLE001 - unknown, never fatal
        log.debug("cannot read Ray's actor table: %s", err)
        return None


def map_batches_on_actors(ds, stage, *, max_restarts: int, max_task_retries: int, **named):
    """`ds.map_batches(stage, **named)` on actors restarted at most `max_restarts` times, each batch
    retried up to `max_task_retries` times (-1: unbounded).

    Why internal: Ray 2.60 deprecates `map_batches(**ray_remote_args)` (removed in 2.64, a warning on
    every call) and has no named parameter for an actor's `max_restarts` / `max_task_retries` yet; its
    Ray Data default is unbounded restarts. `Dataset.map_batches_internal` (a DeveloperAPI) is what
    `map_batches` calls after its checks (a positive batch size, given when asking for GPUs, which the
    callers here always pass) and takes these as remote args without the warning.
    Checked: ray 2.60.0."""
    return ds.map_batches_internal(
        stage, max_restarts=max_restarts, max_task_retries=max_task_retries, **named
    )


def ray_working_dir_files(working_dir: str, excludes: list[str]) -> list:
    """The files a job's `runtime_env={"working_dir": ..., "excludes": ...}` uploads, as `Path`s: walked
    by Ray's own packer, so `.gitignore` / `.rayignore` in every directory and the excludes count exactly
    as they do for the upload (and `RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1` as well).

    Why private: `ray._private.runtime_env.packaging._dir_travel` and `_get_excludes` are what
    `_zip_files` walks; no public API says what a working directory ships before it is uploaded.
    Checked: ray 2.60.0."""
    import os
    from pathlib import Path

    from ray._private.runtime_env import packaging

    root = Path(working_dir).absolute()
    files: list = []

    def handler(path: Path) -> None:
        if path.is_file():
            files.append(path)

    quiet = logging.getLogger("runner.compat.ray_packaging")  # Ray logs each ignore file it finds
    quiet.setLevel(logging.WARNING)
    include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    packaging._dir_travel(
        root,
        [packaging._get_excludes(root, excludes)],
        handler,
        include_gitignore=include_gitignore,
        logger=quiet,
    )
    return files


# --- xgrammar ------------------------------------------------------------------------------------------

# xgrammar (0.2.8, 0.2.9) writes the characters of a JSON-schema string with minLength / maxLength as
# [^"\\\r\n], which lets raw control characters (a NUL byte token) into the string: not JSON. Its plain
# strings exclude them, as JSON requires.
_LENGTH_CHARS = r"[^\"\\\r\n]"
_JSON_CHARS = r"[^\0-\x1f\"\\\r\n]"


def json_strings_without_controls(grammar):
    """A JSON-schema grammar whose length-bounded strings exclude control characters, as its plain
    strings do. Why undocumented: the fix edits the grammar's EBNF text (`str(grammar)`, re-read with
    `Grammar.from_ebnf`), whose layout xgrammar does not document; when the layout changes the text
    no longer holds the pattern and the grammar is returned as it is (tests/test_compat.py then fails,
    naming the version). Checked: xgrammar 0.2.8, 0.2.9."""
    import xgrammar as xgr

    text = str(grammar)
    return (
        xgr.Grammar.from_ebnf(text.replace(_LENGTH_CHARS, _JSON_CHARS)) if _LENGTH_CHARS in text else grammar
    )


# --- transformers + accelerate: sizing and placing a model without weights (runner.planning) -------------


def quantizer_for(quantization_config):
    """transformers' quantizer for a `BitsAndBytesConfig`, as from_pretrained builds it
    (`quantizers.auto.AutoHfQuantizer.from_config`). Why undocumented: from_pretrained builds and uses it
    internally; the planner needs the same object to leave out the modules bitsandbytes skips and to
    size quantized weights. Checked: transformers 5.23.0, 5.24.0."""
    from transformers.quantizers.auto import AutoHfQuantizer

    return AutoHfQuantizer.from_config(quantization_config, pre_quantized=False)


def quantize_skeleton(quantizer, model, dtype) -> None:
    """Swap a meta-device model's linear layers for the quantizer's, as loading does
    (`HfQuantizer.preprocess_model`). Checked: transformers 5.23.0, 5.24.0."""
    quantizer.preprocess_model(
        model=model, dtype=dtype, device_map=None, checkpoint_files=None, use_kernels=False
    )


def module_sizes(model, quantizer) -> dict[str, int]:
    """Bytes of every module, parameter and buffer of a (meta) model for the quantizer's element sizes:
    accelerate's `compute_module_sizes` in the copy transformers 5 loads with
    (`integrations.accelerate`, which takes the quantizer). Checked: transformers 5.23.0, 5.24.0."""
    from transformers.integrations.accelerate import compute_module_sizes

    return {k: int(v) for k, v in compute_module_sizes(model, quantizer, only_modules=False)[0].items()}


def no_split_modules(model) -> list[str]:
    """The layer classes a device map must not split (`_no_split_modules`). Checked: transformers 5.23.0, 5.24.0."""
    return list(getattr(model, "_no_split_modules", None) or [])


def auto_device_map(model, max_memory: dict, quantizer) -> dict:
    """The device map `device_map="auto"` computes for these caps: transformers' copies of accelerate's
    `get_balanced_memory` + `infer_auto_device_map`, with the quantizer's `adjust_max_memory` between
    them, as from_pretrained does. Checked: transformers 5.23.0, 5.24.0 (accelerate 1.16.0)."""
    from transformers.integrations.accelerate import get_balanced_memory, infer_auto_device_map

    no_split = no_split_modules(model)
    caps = get_balanced_memory(model, dict(max_memory), no_split, hf_quantizer=quantizer)
    if quantizer is not None:
        caps = quantizer.adjust_max_memory(caps)
    return infer_auto_device_map(
        model, max_memory=caps, no_split_module_classes=no_split, hf_quantizer=quantizer
    )
