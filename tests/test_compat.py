"""Every private or undocumented library API the project uses (runner/compat/) still behaves.

Each test exercises one entry of runner.compat on the installed versions and fails naming the API and
the version, so a new release that changes one says exactly what broke (scripts/check_latest.sh runs
this file against the newest releases first).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from runner import compat
from runner.config import BatchingConfig, ModelConfig, SamplingConfig

TRANSFORMERS = f"transformers {compat.version('transformers')}"


def broke(api: str, package: str = "transformers") -> str:
    return f"{api} no longer behaves on {package} {compat.version(package)} (runner/compat/)"


@pytest.fixture(scope="module")
def model(tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        tiny_model, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()


@pytest.fixture(scope="module")
def continuous(tiny_model):
    from runner.engine import Engine

    batching = BatchingConfig(strategy="continuous", token_budget=4096, max_batch_size=8)
    engine = Engine(ModelConfig(path=tiny_model, dtype="float32"), SamplingConfig(max_new_tokens=6), batching)
    yield engine
    engine.close()


def test_versions_are_read_and_compared():
    assert compat.version("transformers") != "not installed"
    assert compat.version("no-such-distribution-xyz") == "not installed"
    assert compat.at_least("torch", "2.5") and not compat.at_least("torch", "99.0")
    assert compat._release("2.13.0+cpu") == (2, 13, 0) and compat._release("5.24.0rc1") == (5, 24, 0)
    assert compat.versions_line("transformers").startswith("transformers ")


def test_attn_implementation_is_readable(model):
    assert compat.attn_implementation(model) == "sdpa", broke("config._attn_implementation")
    assert compat.attn_implementation(model.config) == "sdpa", broke("config._attn_implementation")


def test_model_class_flags_are_declared(model):
    from transformers import LlamaForCausalLM, MambaForCausalLM

    for flag in ("_supports_sdpa", "_supports_flash_attn", "_supports_attention_backend"):
        assert compat.model_flag(LlamaForCausalLM, flag, None) is True, broke(f"LlamaForCausalLM.{flag}")
    # transformers 5.25 dropped `_is_stateful`; Architecture then reads Mamba's recurrent layer types.
    if not compat.at_least("transformers", "5.25"):
        assert compat.model_flag(MambaForCausalLM, "_is_stateful", None) is True, broke("Mamba._is_stateful")
    assert callable(compat.model_flag(model, "_supports_default_dynamic_cache", None)), broke(
        "PreTrainedModel._supports_default_dynamic_cache"
    )
    with pytest.raises(ValueError):
        compat.model_flag(model, "config")


def test_causal_lm_class_is_found_without_loading(model):
    from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM, T5Config

    assert compat.causal_lm_class(LlamaConfig()) is LlamaForCausalLM, broke("auto_factory._get_model_class")
    assert compat.causal_lm_class(GPT2Config()).__name__ == "GPT2LMHeadModel", broke("_get_model_class")
    with pytest.raises(KeyError):
        compat.causal_lm_class(T5Config())  # an encoder-decoder is no causal LM


def test_continuous_manager_state_is_readable(continuous):
    manager = continuous.generator.manager
    assert compat.manager_accepting(manager), broke("background_thread_status.can_accept_new_requests")
    assert compat.manager_failure(manager) is None, broke("background_thread_status.fatal_error")
    thread = compat.manager_thread(manager)
    assert thread is not None and thread.is_alive(), broke("ContinuousBatchingManager._generation_thread")
    assert thread.daemon, "the generation thread must be a daemon (started from a daemon thread)"
    assert compat.manager_cache_built(manager), broke("ContinuousBatchingManager.batch_processor")


def test_per_sequence_attention_is_reached_by_continuous_batching(tiny_model):
    """transformers 5.23 passed the paged cache to attention functions, 5.24 updates it in the layer:
    our per-sequence attention must be reached under whichever convention is installed, for the layers
    it is used for (every layer on 5.23; eager layers on 5.24, where plain SDPA is transformers' own)."""
    from runner.engine import Engine, Request, paged_attention

    for attention in ("eager", "sdpa"):
        batching = BatchingConfig(strategy="continuous", token_budget=4096, max_batch_size=8)
        model = ModelConfig(path=tiny_model, dtype="float32", attention=attention)
        engine = Engine(model, SamplingConfig(max_new_tokens=4), batching)
        before = paged_attention.calls
        prompts = engine.tokenize(["Hello there", "The quick brown fox jumps over the lazy dog"])
        done = engine.generate([Request(f"r{i}", p, 4) for i, p in enumerate(prompts)])
        engine.close()
        assert all(c.error is None for c in done)
        ours = paged_attention.calls > before
        expected = attention == "eager" or not compat.at_least("transformers", "5.24")
        assert ours == expected, broke(f"the paged attention calling convention ({attention}: packed_call)")


def test_packed_attention_calls_carry_their_sequence_lengths(tiny_model, monkeypatch):
    """The packed layout's kwargs (cu_seq_lens_q/k, max_length_q/k) as continuous batching passes them
    to an eager layer (our per-sequence attention reads them through compat.packed_lengths), and the
    paged cache's `update(..., layer_idx=, kwargs=)` where the function writes the cache (<= 5.23)."""
    from runner.engine import Engine, Request

    seen, updates, real_lengths, real_update = [], [], compat.packed_lengths, compat.paged_update
    monkeypatch.setattr(compat, "packed_lengths", lambda kw: seen.append(real_lengths(kw)) or seen[-1])
    monkeypatch.setattr(compat, "paged_update", lambda *a: updates.append(1) or real_update(*a))
    batching = BatchingConfig(strategy="continuous", token_budget=4096, max_batch_size=8)
    engine = Engine(
        ModelConfig(path=tiny_model, dtype="float32", attention="eager"), SamplingConfig(), batching
    )
    prompts = engine.tokenize(["Hello there", "The quick brown fox jumps over the lazy dog"])
    done = engine.generate([Request(f"r{i}", p, 3) for i, p in enumerate(prompts)])
    engine.close()
    assert all(c.error is None for c in done)
    assert seen, broke("the packed attention kwargs (cu_seq_lens_q/k)")
    for cu_q, cu_k, max_q, max_k in seen:
        assert cu_q[0] == 0 and bool((cu_q[1:] >= cu_q[:-1]).all()), broke("cu_seq_lens_q")
        assert cu_k[0] == 0 and bool((cu_k[1:] >= cu_k[:-1]).all()), broke("cu_seq_lens_k")
        # The longest lengths are what the varlen kernel is sized by (a bound, stated by the step).
        assert max_q is None or int(max_q) >= 1, broke("max_length_q")
        assert max_k is None or int(max_k) >= 1, broke("max_length_k")
    if not compat.at_least("transformers", "5.24"):
        assert updates, broke("PagedAttentionCache.update(..., layer_idx=, kwargs=)")


def test_attention_functions_receive_their_layer_and_extras():
    """What a model's layers pass an attention function (layer_idx on the module, sliding_window and
    the other extras in kwargs), as runner.engine.cascade and paged_attention read them."""
    from transformers import AttentionInterface, AutoModelForCausalLM, MistralConfig

    config = MistralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=4,
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    seen, original = [], AttentionInterface()["sdpa"]

    def capture(module, query, key, value, attention_mask, **kwargs):
        seen.append((compat.layer_index(module), compat.attention_extras(module, kwargs)))
        return original(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("sdpa", capture)
    try:
        with torch.inference_mode():
            model(input_ids=torch.tensor([[1, 2, 3]]))
    finally:
        AttentionInterface.register("sdpa", original)
    assert [layer for layer, _ in seen] == [0, 1], broke("attention module.layer_idx")
    assert all(extras["sliding_window"] == 4 for _, extras in seen), broke("the sliding_window kwarg")
    assert all(extras["softcap"] is None and extras["sinks"] is None for _, extras in seen)


def test_packed_call_recognises_only_continuous_batching_calls():
    assert compat.packed_call(None, {}) is None
    assert compat.packed_call(None, {"cu_seq_lens_q": torch.tensor([0, 1]), "position_ids": None}) is None
    updated = {"cu_seq_lens_q": torch.tensor([0, 1]), "cu_seq_lens_k": torch.tensor([0, 3]), "read_index": []}
    assert compat.packed_call(None, updated) == "updated"
    assert compat.packed_call(None, {**updated, "block_table": torch.zeros(1)}) is None
    assert set(compat.attention_originals()) == {"sdpa", "paged|eager"}, broke(
        "integrations attention functions"
    )
    assert all(callable(f) for f in compat.attention_originals().values())


def test_sampled_continuous_rows_use_the_per_request_processor_interface(tiny_model):
    """Our keyed-noise processor is a per-request CB processor (supported_kwargs, prepare_tensor_args,
    request.state): sampling through the manager must equal padded's draw."""
    from runner.engine import Engine, Request

    base, processor_list = compat.cb_processor_base()
    for name in ("prepare_tensor_args", "fill_defaults"):
        assert hasattr(base, name), broke(f"ContinuousBatchingLogitsProcessor.{name}")
    assert callable(processor_list), broke("ContinuousBatchingLogitsProcessorList")
    sampling = SamplingConfig(max_new_tokens=8, temperature=0.9, seed=3)
    outs = {}
    for strategy in ("padded", "continuous"):
        batching = BatchingConfig(strategy=strategy, token_budget=4096, max_batch_size=8)
        engine = Engine(ModelConfig(path=tiny_model, dtype="float32"), sampling, batching)
        prompts = engine.tokenize(["Hello", "What is the capital of France?"])
        outs[strategy] = [
            c.token_ids for c in engine.generate([Request(f"r{i}", p, 8) for i, p in enumerate(prompts)])
        ]
        engine.close()
    assert outs["padded"] == outs["continuous"], broke(
        "request.state.logit_processor_kwargs / position_offset"
    )


def test_a_sampling_manager_states_its_per_request_keys(tiny_model):
    """`logit_processor.supported_keys`: the per-request arguments a manager takes (runner.engine
    .routing sends rows needing others to padded)."""
    from runner.engine import Engine

    batching = BatchingConfig(strategy="continuous", token_budget=4096, max_batch_size=8)
    sampling = SamplingConfig(max_new_tokens=4, temperature=0.9, top_p=0.9, seed=3)
    engine = Engine(ModelConfig(path=tiny_model, dtype="float32"), sampling, batching)
    keys = compat.processor_keys(engine.generator.manager)
    engine.close()
    assert {"sample_key", "greedy", "temperature", "top_p"} <= keys, broke("logit_processor.supported_keys")


def test_cache_layer_types_are_inferred_as_the_cache_does():
    from transformers import LlamaConfig, MistralConfig

    assert compat.layer_types(LlamaConfig(num_hidden_layers=2)) == ["full_attention"] * 2
    assert (
        compat.layer_types(MistralConfig(num_hidden_layers=2, sliding_window=16)) == ["sliding_attention"] * 2
    ), broke("cache_utils.get_layer_types_and_kwargs")


def test_own_cache_layers_are_read_by_the_model(model):
    """A DynamicCache whose layers were replaced (full columns; our slot layers) gives the logits of
    transformers' own cache, at the prefill and at a decode step (runner.engine.kv_cache)."""
    from transformers import DynamicCache

    from runner.engine.forward import ModelCall
    from runner.engine.kv_cache import SlotCache, full_cache

    call, prompt, step = ModelCall(model), torch.tensor([[5, 9, 2, 7, 3]]), torch.tensor([[11]])
    assert compat.dynamic_layer_base().__name__ == "DynamicLayer", broke("transformers.DynamicLayer")
    with torch.inference_mode():
        theirs, ours = DynamicCache(config=model.config), full_cache(model.config)
        expected = [call.logits(prompt, cache=theirs), call.logits(step, cache=theirs)]
        got = [call.logits(prompt, cache=ours)]
        slots = SlotCache(model.config, 8)
        slots.fill([[(layer.keys, layer.values) for layer in ours.layers]], prompt.shape[1])
        got.append(call.logits(step, cache=slots))
    for a, b in zip(expected, got, strict=True):
        assert torch.allclose(a, b, atol=1e-5), broke("DynamicCache.layers / DynamicLayer")


def test_remote_code_model_class_is_found_without_loading(tmp_path):
    (tmp_path / "modeling_tiny.py").write_text(
        "from transformers import LlamaForCausalLM\n\n\nclass TinyRemote(LlamaForCausalLM):\n    pass\n"
    )
    found = compat.remote_model_class("modeling_tiny.TinyRemote", str(tmp_path), None)
    assert found.__name__ == "TinyRemote", broke("dynamic_module_utils.get_class_from_dynamic_module")


def test_adapter_flag_and_peft_floor(model):
    from transformers.integrations import peft as hf_peft

    assert compat.has_loaded_adapters(model) is False, broke("PreTrainedModel._hf_peft_config_loaded")
    floor = getattr(hf_peft, "MIN_PEFT_VERSION", None)
    assert isinstance(floor, str), broke("transformers.integrations.peft.MIN_PEFT_VERSION")
    problem = compat.adapter_switching_problem()
    assert (problem is None) == compat.at_least("peft", floor)
    if problem is not None:
        assert f"peft >= {floor}" in problem and compat.version("peft") in problem


def test_ray_actor_table_lists_actors_and_restarts(ray_cpu):
    @ray_cpu.remote(num_cpus=0.1)
    class ProbeStage:
        def ping(self) -> int:
            return 1

    actor = ProbeStage.remote()
    assert ray_cpu.get(actor.ping.remote()) == 1
    table = compat.ray_actor_table()
    assert table is not None, broke("ray._private.state.actors", "ray")
    mine = [info for info in table.values() if "ProbeStage" in info["class"]]
    assert mine and mine[0]["restarts"] == 0, broke("ray._private.state.actors NumRestarts", "ray")


def test_read_task_metadata_is_accepted_by_ray_data():
    from ray.data import ReadTask

    task = ReadTask(lambda: [], compat.read_task_metadata())
    assert task.metadata.num_rows is None, broke("ray.data.block.BlockMetadata", "ray")


def test_json_length_strings_exclude_control_characters():
    import xgrammar as xgr

    schema = json.dumps({"type": "object", "properties": {"a": {"type": "string", "minLength": 1}}})
    raw = str(xgr.Grammar.from_json_schema(schema, any_whitespace=False))
    assert compat._LENGTH_CHARS in raw, broke("Grammar text of length-bounded strings", "xgrammar")
    fixed = str(
        compat.json_strings_without_controls(xgr.Grammar.from_json_schema(schema, any_whitespace=False))
    )
    assert compat._LENGTH_CHARS not in fixed, broke("Grammar.from_ebnf", "xgrammar")
    assert compat._JSON_CHARS in fixed, broke("Grammar.from_ebnf", "xgrammar")


def test_meta_model_sizing_and_placement_as_loading_does():
    """The planner's private transformers/accelerate calls (runner.planning.weights)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig

    config = LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4
    )
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    sizes = compat.module_sizes(model, None)
    params = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert sizes[""] == params, broke("integrations.accelerate.compute_module_sizes")
    assert compat.no_split_modules(model) == ["LlamaDecoderLayer"], broke("PreTrainedModel._no_split_modules")
    placed = compat.auto_device_map(model, {0: sizes[""] // 2, "cpu": 10 * sizes[""]}, None)
    assert set(placed.values()) == {0, "cpu"}, broke("integrations.accelerate.infer_auto_device_map")
    quantizer = compat.quantizer_for(BitsAndBytesConfig(load_in_4bit=True))
    with init_empty_weights(include_buffers=False):
        quantized = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    compat.quantize_skeleton(quantizer, quantized, torch.float32)
    kinds = {type(m).__name__ for m in quantized.modules()}
    assert "Linear4bit" in kinds, broke("HfQuantizer.preprocess_model")
    assert compat.module_sizes(quantized, quantizer)[""] < sizes[""] / 2, broke(
        "compute_module_sizes(quantizer)"
    )


def test_ray_working_dir_files_are_what_the_upload_would_ship(tmp_path):
    (tmp_path / "job.py").write_text("x")
    (tmp_path / "weights.bin").write_text("x")
    (tmp_path / ".gitignore").write_text("weights.bin\n")
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "notes.txt").write_text("x")
    shipped = {
        p.relative_to(tmp_path).as_posix() for p in compat.ray_working_dir_files(str(tmp_path), ["scratch"])
    }
    assert "job.py" in shipped, broke("ray._private.runtime_env.packaging._dir_travel", "ray")
    assert "weights.bin" not in shipped and "scratch/notes.txt" not in shipped, broke(
        "ray._private.runtime_env.packaging._get_excludes / .gitignore", "ray"
    )


def test_varlen_attention_is_spelled_from_the_installed_signature(monkeypatch):
    """torch 2.13's varlen kernel takes `enable_gqa` and `window_size`, torch 2.11's neither: grouped
    heads are repeated for the older one, and a windowed layer is left to the caller (None)."""
    import inspect

    import torch

    from runner.compat import torch as compat_torch

    fn, takes = compat_torch._varlen()
    if fn is not None:  # what this torch's kernel takes is what the call may pass
        assert {"scale"} <= takes, inspect.signature(fn)
    seen = {}

    def old_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None):
        seen.update(heads=(query.shape[1], key.shape[1], value.shape[1]), scale=scale)
        return query

    monkeypatch.setattr(
        compat_torch, "_varlen", lambda: (old_varlen, frozenset(inspect.signature(old_varlen).parameters))
    )
    q, kv = torch.zeros(5, 8, 4), torch.zeros(5, 2, 4)
    cu = torch.tensor([0, 5], dtype=torch.int32)
    assert compat_torch.varlen_attention(q, kv, kv, cu, cu, 5, 5, 0.5, None) is q
    assert seen == {"heads": (8, 8, 8), "scale": 0.5}
    assert compat_torch.varlen_attention(q, kv, kv, cu, cu, 5, 5, 0.5, 4) is None


def test_a_local_rays_processes_start_in_process_groups_of_their_own():
    """Ray starts its processes through `ray._private.services.ConsolePopen`, with a `preexec_fn` of its
    own (block SIGINT, the parent-death signal): inside `own_process_groups` a child leads a new
    process group and Ray's `preexec_fn` still runs; outside it nothing changes."""
    import os
    import signal

    from ray._private import services

    from runner import compat

    def ray_preexec():  # what Ray's does first: SIGINT blocked in the child
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    script = "import signal; print(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))"
    original = services.ConsolePopen.__init__
    with compat.own_process_groups():
        child = services.ConsolePopen(
            [sys.executable, "-c", script], preexec_fn=ray_preexec, stdout=subprocess.PIPE, text=True
        )
        out, _ = child.communicate(timeout=30)
        assert out.strip() == "True"
    assert services.ConsolePopen.__init__ is original
    plain = services.ConsolePopen(
        [sys.executable, "-c", "import os; print(os.getpgrp())"], stdout=subprocess.PIPE, text=True
    )
    assert int(plain.communicate(timeout=30)[0]) == os.getpgrp()
    with compat.own_process_groups():
        grouped = services.ConsolePopen(
            [sys.executable, "-c", "import os; print(os.getpgrp(), os.getpid())"],
            stdout=subprocess.PIPE,
            text=True,
        )
    group, pid = grouped.communicate(timeout=30)[0].split()
    assert group == pid != str(os.getpgrp())


def test_ray_init_can_leave_the_sigterm_handler_in_place():
    """`ray.init` installs its own SIGTERM handler (sys.exit(15)) through
    `ray._private.utils.set_sigterm_handler`; inside `keep_sigterm_handler` that call changes nothing."""
    import signal

    from ray._private import utils

    def mine(signum, frame):  # pragma: no cover - never called
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        with compat.keep_sigterm_handler():
            utils.set_sigterm_handler(lambda signum, frame: None)
            assert signal.getsignal(signal.SIGTERM) is mine
        utils.set_sigterm_handler(signal.SIG_DFL)  # restored: Ray's call works again outside
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)
