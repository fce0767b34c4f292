"""Every use of a library's private or undocumented API, in one package, one module per library.

The stack this project runs on (transformers, accelerate, ray, peft, xgrammar, bitsandbytes, torch)
releases every few weeks, and a private name can change in any of them (transformers 5.24 changed
`ContinuousBatchingManager._run_generation_loop`'s signature and stopped passing the paged cache to
attention functions, which broke this project's continuous strategy at once). So each use says what
it needs, why there is no public way, and the versions it was checked on; tests/test_compat.py
exercises every one and fails naming the API and the installed version when it stops behaving, and
tests/test_private_api.py fails on any private or internal-module use outside this package.
Everywhere else the code uses public APIs only. `CHECKED` is what the last lock was tested with
(constraints.txt); `scripts/check_latest.sh` runs the same tests on the newest releases.

- `versions`: installed versions, and comparing them;
- `transformers`: model classes and their flags, caches, remote code, adapters, sizing without weights;
- `transformers_batching`: continuous batching's manager, per-request processors, paged cache, and
  the calling convention of attention functions;
- `torch`: the varlen attention kernel's keyword arguments;
- `ray`: the actor table, Ray Data read-task metadata and actor-pool restart bounds, the files a job's working directory ships, a local Ray's process groups, `ray.init`'s SIGTERM handler;
- `xgrammar`: JSON-schema grammar text.

`from runner import compat; compat.NAME` reaches every function of every module.
"""

from runner.compat.ray import (
    keep_sigterm_handler,
    map_batches_on_actors,
    own_process_groups,
    ray_actor_table,
    ray_working_dir_files,
    read_task_metadata,
)
from runner.compat.torch import varlen_attention, varlen_available
from runner.compat.transformers import (
    adapter_switching_problem,
    attn_implementation,
    auto_device_map,
    cache_with_layers,
    causal_lm_class,
    dynamic_layer_base,
    has_loaded_adapters,
    layer_types,
    model_flag,
    module_sizes,
    no_split_modules,
    quantize_skeleton,
    quantizer_for,
    remote_model_class,
)
from runner.compat.transformers_batching import (
    attention_extras,
    attention_originals,
    cb_processor_base,
    count_prefix_matches,
    layer_index,
    manager_accepting,
    manager_cache_built,
    manager_failure,
    manager_thread,
    packed_call,
    packed_lengths,
    paged_cache_class,
    paged_layer_window,
    paged_update,
    per_request_processor,
    per_request_processor_list,
    prefix_tokens_matched,
    processor_keys,
    request_processor_state,
    set_manager_processors,
)
from runner.compat.versions import CHECKED, _release, at_least, version, versions_line
from runner.compat.xgrammar import _JSON_CHARS, _LENGTH_CHARS, json_strings_without_controls

__all__ = [
    "CHECKED",
    "_JSON_CHARS",
    "_LENGTH_CHARS",
    "_release",
    "adapter_switching_problem",
    "at_least",
    "attention_extras",
    "attention_originals",
    "attn_implementation",
    "auto_device_map",
    "cache_with_layers",
    "causal_lm_class",
    "cb_processor_base",
    "count_prefix_matches",
    "dynamic_layer_base",
    "has_loaded_adapters",
    "json_strings_without_controls",
    "keep_sigterm_handler",
    "layer_index",
    "layer_types",
    "manager_accepting",
    "manager_cache_built",
    "manager_failure",
    "manager_thread",
    "map_batches_on_actors",
    "model_flag",
    "module_sizes",
    "no_split_modules",
    "own_process_groups",
    "packed_call",
    "packed_lengths",
    "paged_cache_class",
    "paged_layer_window",
    "paged_update",
    "per_request_processor",
    "per_request_processor_list",
    "prefix_tokens_matched",
    "processor_keys",
    "quantize_skeleton",
    "quantizer_for",
    "ray_actor_table",
    "ray_working_dir_files",
    "read_task_metadata",
    "remote_model_class",
    "request_processor_state",
    "set_manager_processors",
    "version",
    "varlen_attention",
    "varlen_available",
    "versions_line",
]
