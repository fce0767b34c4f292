"""The planner (runner.planning): its numbers against loaded models, its verdicts, the job's start check.

Accuracy: tiny random models of five architectures are saved, loaded on CPU in fp32 / bf16 /
bitsandbytes 8-bit / 4-bit, and the planned weight bytes (from the config alone, on the meta device)
are compared with `get_memory_footprint()` plus the quantization state bitsandbytes keeps beside the
parameters; the planned cache bytes per row with what the engine's caches hold after real forwards.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from runner.config import ModelConfig, QuantizationConfig, build_config
from runner.errors import ConfigError
from runner.planning import Hardware, plan
from runner.planning.hardware import GIB, node_gpu_memory
from runner.planning.kv import cache_cost
from runner.planning.report import verdict_line
from runner.planning.weights import Skeleton

CONFIGS = Path(__file__).parent / "data" / "model_configs"
WIDE = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4}
ARCHS = {
    "llama": ("LlamaConfig", {**WIDE, "num_key_value_heads": 2}),
    "mistral": ("MistralConfig", {**WIDE, "num_key_value_heads": 2, "sliding_window": 64}),
    "mixtral": (
        "MixtralConfig",
        {**WIDE, "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2},
    ),
    "gpt2": ("GPT2Config", {"n_embd": 256, "n_layer": 2, "n_head": 4, "n_positions": 512}),
    "mamba": ("MambaConfig", {"hidden_size": 256, "state_size": 16, "num_hidden_layers": 2, "expand": 2}),
}
PRECISIONS = {
    "fp32": ("float32", "none"),
    "bf16": ("bfloat16", "none"),
    "8bit": ("float32", "8bit"),
    "4bit": ("float32", "4bit"),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each architecture saved once (random weights, vocab 512, untied head)."""
    import transformers
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("plan-models")
    paths = {}
    for name, (cls, kwargs) in ARCHS.items():
        config = getattr(transformers, cls)(vocab_size=512, tie_word_embeddings=False, **kwargs)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(root / name)
        paths[name] = root / name
    return paths


def model_config(path, precision: str) -> ModelConfig:
    dtype, mode = PRECISIONS[precision]
    quant = QuantizationConfig(mode=mode, compute_dtype="float32")
    return ModelConfig(path=str(path), dtype=dtype, quantization=quant)


def load(model: ModelConfig):
    from transformers import AutoModelForCausalLM

    from runner.engine.loading import bnb_config

    dtype = getattr(torch, model.dtype)
    kwargs = {"dtype": dtype}
    quant = bnb_config(model.quantization, dtype)
    if quant is not None:
        kwargs |= {"quantization_config": quant, "device_map": "cpu"}
    return AutoModelForCausalLM.from_pretrained(model.path, **kwargs).eval()


def quant_state_bytes(loaded) -> int:
    """What bitsandbytes holds beside the parameters: 4-bit block scales (nested: + their scales and
    code books), 8-bit per-row scales."""
    import bitsandbytes as bnb

    def nbytes(t):
        return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0

    total = 0
    for module in loaded.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            qs = module.weight.quant_state
            total += nbytes(qs.absmax) + nbytes(qs.code)
            if qs.state2 is not None:
                total += nbytes(qs.state2.absmax) + nbytes(qs.state2.code)
        elif isinstance(module, bnb.nn.Linear8bitLt):
            total += nbytes(module.weight.SCB)
    return total


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_planned_weights_match_the_loaded_model_within_5_percent(saved, arch, precision):
    model = model_config(saved[arch], precision)
    skeleton = Skeleton.build(model, getattr(torch, model.dtype))
    loaded = load(model)
    footprint = loaded.get_memory_footprint()
    # The parameters as get_memory_footprint counts them, and the whole with bitsandbytes' state.
    assert abs(skeleton.parameter_bytes - footprint) <= 0.05 * footprint
    actual = footprint + quant_state_bytes(loaded)
    assert abs(skeleton.weight_bytes - actual) <= 0.05 * actual, (skeleton.weight_bytes, actual)
    if precision == "4bit" and arch != "mixtral":  # quantization must really have shrunk the linears
        assert (
            skeleton.weight_bytes
            < 0.5 * Skeleton.build(model_config(saved[arch], "fp32"), torch.float32).weight_bytes
        )


def cache_bytes(cache) -> int:
    """Bytes of every tensor a transformers cache holds (keys/values, conv and recurrent states)."""
    seen, total = set(), 0
    stack = list(cache.layers)
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if id(item) not in seen and item.dim() > 0:
                seen.add(id(item))
                total += item.numel() * item.element_size()
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif hasattr(item, "__dict__") and not isinstance(item, type):
            stack.extend(vars(item).values())
    return total


def measured_row_bytes(path, tokens: int, strategy: str, rows: int = 3) -> float:
    """Cache bytes per row after a prefill of `tokens`, in the cache the strategy runs with:
    padded's full cache (runner.engine.kv_cache), generate's DynamicCache."""
    from transformers import AutoModelForCausalLM, DynamicCache

    from runner.engine.kv_cache import full_cache

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    cache = full_cache(model.config) if strategy == "padded" else DynamicCache(config=model.config)
    ids = torch.randint(0, 500, (rows, tokens))
    with torch.no_grad():
        out = model(ids, past_key_values=cache, use_cache=True)
    # The cache the model returns: `past_key_values`, or Mamba's `cache_params` on transformers 5.23.
    returned = next(
        (
            c
            for c in (getattr(out, n, None) for n in ("past_key_values", "cache_params", "cache"))
            if c is not None
        ),
        cache,
    )
    return cache_bytes(returned) / rows


@pytest.mark.parametrize(
    ("arch", "strategy"),
    [
        ("llama", "padded"),
        ("mixtral", "padded"),
        ("gpt2", "padded"),
        ("mistral", "padded"),
        ("mistral", "generate"),
        ("mamba", "generate"),
    ],
)
def test_planned_cache_growth_matches_the_engines_cache_within_5_percent(saved, arch, strategy):
    from transformers import AutoConfig

    cost = cache_cost(AutoConfig.from_pretrained(saved[arch]), torch.float32, strategy)
    short, long = 24, 120  # the long one is past mistral's window of 64
    planned = cost.row_bytes(long) - cost.row_bytes(short)
    growth = measured_row_bytes(saved[arch], long, strategy) - measured_row_bytes(
        saved[arch], short, strategy
    )
    assert abs(planned - growth) <= 0.05 * max(growth, 1) + 1e-9, (planned, growth)
    total = measured_row_bytes(saved[arch], long, strategy)
    assert abs(cost.row_bytes(long) - total) <= 0.05 * total, (cost.row_bytes(long), total)
    if arch == "mamba":  # a recurrent state per row, nothing per token
        assert cost.per_token == 0 and growth == 0 and cost.per_row > 0
    if arch == "mistral" and strategy == "generate":  # capped at the window: no growth past it
        assert growth < 0.7 * (long - short) * cost.per_token


def job(path: str, **sections) -> object:
    tree = {"model": {"path": path, "dtype": "bfloat16"}, "data": {"source": "x.jsonl"}} | sections
    return build_config(tree)


def test_public_configs_plan_their_known_sizes():
    """Published parameter counts (x 2 bytes in bf16): the configs are the models'."""
    expected = {
        "llama-3.1-8b": 8.03e9,
        "llama-3.1-70b": 70.55e9,
        "mixtral-8x7b": 46.70e9,
        "qwen2.5-32b": 32.76e9,
        "gemma-2-27b": 27.23e9,
    }
    for name, params in expected.items():
        sk = Skeleton.build(ModelConfig(path=str(CONFIGS / name), dtype="bfloat16"), torch.bfloat16)
        assert abs(sk.weight_bytes / 2 - params) <= 0.01 * params, name


def test_70b_on_24gb_gpus_does_not_fit_and_the_named_change_does():
    path = str(CONFIGS / "llama-3.1-70b")
    one = plan(job(path), Hardware.uniform(1, 1, 24 * GIB, 256 * GIB))
    assert one.verdict == "offload" and verdict_line(one).startswith("fits only with CPU offload: ")
    four = Hardware.uniform(1, 4, 24 * GIB, 256 * GIB)
    bf16 = plan(job(path), four)
    assert (
        bf16.verdict == "no"
        and bf16.change == "model.quantization.mode: 4bit and placement.gpus_per_replica: 3"
    )
    quantized = job(path, model={"path": path, "quantization": {"mode": "4bit"}})
    result = plan(quantized, four)
    line = verdict_line(result)
    assert line.startswith("does not fit: ") and "transformers refuses for bitsandbytes" in line
    assert result.change == "placement.gpus_per_replica: 3"
    fixed = job(
        path, model={"path": path, "quantization": {"mode": "4bit"}}, placement={"gpus_per_replica": 3}
    )
    assert plan(fixed, four).verdict == "fits"


def test_auto_placement_splits_70b_over_the_fewest_gpus_and_caps_each():
    path = str(CONFIGS / "llama-3.1-70b")
    auto = {"gpus_per_replica": "auto", "max_memory": "auto"}
    eight = plan(job(path, placement=auto), Hardware.uniform(1, 8, 80 * GIB, 512 * GIB))
    assert eight.verdict == "fits" and eight.gpus_per_replica == 2 and eight.replicas == 4
    assert eight.reasons["gpus_per_replica"].startswith("2: 2 is the fewest GPUs per replica")
    assert list(eight.weights_by_device) == ["0", "1"]  # split over the replica's GPUs, nothing offloaded
    assert set(eight.max_memory) == {"0", "1", "cpu"}  # what auto writes: a cap per GPU (and CPU)


def test_a_row_too_long_for_the_cache_suggests_a_shorter_max_new_tokens():
    cfg = job(str(CONFIGS / "llama-3.1-8b"), sampling={"max_new_tokens": 200000})
    result = plan(cfg, Hardware.uniform(1, 1, 24 * GIB, 64 * GIB))
    assert result.verdict == "no" and "sampling.max_new_tokens: " in result.change
    shorter = int(result.change.rsplit(" ", 1)[1])
    fixed = job(str(CONFIGS / "llama-3.1-8b"), sampling={"max_new_tokens": shorter})
    assert plan(fixed, Hardware.uniform(1, 1, 24 * GIB, 64 * GIB)).verdict == "fits"


def test_gemma_sliding_layers_are_capped_only_where_the_cache_drops_old_positions():
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(CONFIGS / "gemma-2-27b")
    padded, capped = (
        cache_cost(config, torch.bfloat16, "padded"),
        cache_cost(config, torch.bfloat16, "generate"),
    )
    assert padded.row_bytes(16384) == 16384 * padded.per_token
    assert capped.row_bytes(16384) == 23 * 16384 * (padded.per_token // 46) + 23 * 4096 * (
        padded.per_token // 46
    )


def test_cli_plan_demo_offline_prints_a_table_and_a_verdict(runner_cache, capsys):
    from runner.cli import main

    assert main(["plan", "configs/demo.yaml"]) == 0
    out = capsys.readouterr().out
    assert "weights" in out and "token_budget" in out and out.strip().splitlines()[-1].startswith("fits:")


def test_cli_plan_json_and_exit_2_when_it_does_not_fit(capsys):
    from runner.cli import main

    cfg = Path(__file__).parent.parent / "configs" / "demo.yaml"
    args = [
        "plan",
        str(cfg),
        "--set",
        f"model.path={CONFIGS / 'llama-3.1-70b'}",
        "--set",
        "model.quantization.mode=4bit",
    ]
    assert main([*args, "--gpus", "1", "--gpu-memory", "24GiB", "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "no" and doc["line"].startswith("does not fit:") and doc["weights_gib"] > 30
    assert main([*args, "--gpus", "1"]) == 2
    assert "error: --gpus needs --gpu-memory" in capsys.readouterr().err


def test_node_memory_from_labels_or_accelerator_type():
    assert node_gpu_memory({"gpu-memory": "24GiB"}, {}) == 24 * GIB
    assert node_gpu_memory({"ray.io/accelerator-type": "H100"}, {}) == 80 * 10**9
    assert node_gpu_memory({}, {"accelerator_type:A100-80G": 1}) == 80 * 10**9
    assert node_gpu_memory({}, {"GPU": 4}) is None


@pytest.fixture(scope="module")
def fake_gpu_ray():
    """A local Ray offering two fake GPUs labelled with 24 GiB each (no CUDA: replicas run on CPU)."""
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=2,
        labels={"gpu-memory": "24GiB"},
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_cluster_hardware_reads_gpus_and_memory_from_the_ray_nodes(fake_gpu_ray, capsys):
    from runner.cli import main
    from runner.orchestration import cluster

    hw = cluster.hardware()
    assert hw.gpus_per_node == [2] and hw.gpu_memory == 24 * GIB
    args = [
        "plan",
        "configs/demo.yaml",
        "--set",
        f"model.path={CONFIGS / 'llama-3.1-8b'}",
        "--set",
        "placement.gpus_per_replica=auto",
        "--cluster",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Ray cluster: 1 node(s), 2 GPU" in out and "gpus_per_replica: 1" in out


def test_a_job_that_does_not_fit_fails_at_start_before_loading(fake_gpu_ray, tmp_path, monkeypatch):
    from jobs.generate.job import run
    from runner.engine import loading

    def no_load(*args, **kwargs):  # a guard on the driver: the plan must not load the model
        raise AssertionError("the model must not load")

    monkeypatch.setattr(loading, "load_model", no_load)
    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "hi"}\n')
    cfg = build_config(
        {
            "model": {"path": str(CONFIGS / "llama-3.1-70b")},
            "data": {"source": str(data)},
            "output": {"path": str(tmp_path / "out")},
        }
    )
    with pytest.raises(ConfigError, match=r"^plan: does not fit: 131.4 GiB of weights") as err:
        run(cfg)
    assert err.value.exit_code == 2
    # It failed before the run began streaming (which writes the summary first): no replica started.
    assert not (tmp_path / "out" / "_job.json").exists()


@pytest.mark.slow
def test_auto_placement_is_used_by_the_job(fake_gpu_ray, tmp_path, caplog, tiny_model):
    from jobs.generate.job import run

    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"hello {i}"}) + "\n" for i in range(4)))
    cfg = build_config(
        {
            "model": {"path": "demo:tiny-llama"},
            "data": {"source": str(data)},
            "placement": {"gpus_per_replica": "auto", "max_memory": "auto"},
            "sampling": {"max_new_tokens": 2},
            "batching": {"strategy": "padded", "rows_per_task": 2},
            "output": {"path": str(tmp_path / "out")},
        }
    )
    with caplog.at_level(logging.INFO, logger="runner.planning.start"):
        summary = run(cfg)
    assert summary["gpus_per_replica"] == 1 and summary["replicas"] == 2
    assert "placement.gpus_per_replica: auto -> 1 (1: 1 is the fewest" in caplog.text
    assert "placement.max_memory: auto -> None (none needed" in caplog.text
    assert summary["output_rows"] == 4 and summary["output_rows_error"] == 0


def test_unknown_gpu_memory_asks_for_it_and_the_job_check_skips_unless_auto():
    from runner.planning import Node
    from runner.planning.start import start_check

    unknown = Hardware((Node(2, None, 64 * GIB),), "Ray cluster: 1 node(s), 2 GPU")
    cfg = job(str(CONFIGS / "llama-3.1-8b"))
    with pytest.raises(ConfigError, match=r"^GPU memory unknown: give --gpu-memory"):
        plan(cfg, unknown)
    assert start_check(cfg, unknown) is cfg  # explicit placement: the job goes on unplanned
    auto = job(str(CONFIGS / "llama-3.1-8b"), placement={"max_memory": "auto"})
    with pytest.raises(ConfigError, match=r"^placement.max_memory: auto needs each GPU's memory"):
        start_check(auto, unknown)
