"""The engine on a CUDA GPU: bf16 + SDPA, bitsandbytes, cascade attention over a shared prefix, a GPU + CPU
device map, out-of-memory, the token budget.

Skipped where no CUDA GPU is visible (run them with `scripts/gpu_check.sh` on a lent GPU). Real models
(the demo small-llama, random weights), real device memory: the out-of-memory test caps this process's
share of the GPU (`torch.cuda.set_per_process_memory_fraction`) so a batch really fails to allocate.

Exactness in bf16 is not asserted row for row: batched and unbatched runs use kernels of other shapes
(GEMM reduction order, SDPA with and without a padding mask), so a logit moves by a bf16 rounding step
and a near-tie can flip. Each test asserts instead that every row that diverges from unbatched
`generate` diverges only to a token within the oracle's top-5 at that position (vLLM's tests make the
same check, tests/models/utils.py `check_logprobs_close`): wrong masks, positions or caches put other
tokens there. The exact-match rate is printed (`pytest -rA` shows it) and measured on the bench workload
by scripts/gpu_exact.py.
"""

from __future__ import annotations

import gc
import logging

import pytest
import torch

from runner.config import BatchingConfig, ModelConfig, PlacementConfig, SamplingConfig
from runner.engine import Engine, Request, cascade
from runner.engine.engine import model_devices
from runner.engine.loading import load_model
from runner.engine.memory import bytes_per_token
from scripts.gpu_exact import first_divergence, top_tokens, unbatched
from tests.conftest import PROMPTS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

MIXED = [*PROMPTS, PROMPTS[5] * 8]  # 1 to ~750 tokens
LIMITS = [1, 7, 20, 3, 12, 16, 5]
TOP_K = 5


@pytest.fixture(autouse=True)
def release_gpu_memory():
    """Each engine's caches go back to the device before the next test sizes itself from free memory."""
    yield
    gc.collect()
    torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def small_model(runner_cache) -> str:
    from runner.engine.demo_model import resolve_demo

    return resolve_demo("demo:small-llama")


def bf16(path: str, **quant) -> ModelConfig:
    return ModelConfig(path=path, dtype="bfloat16", attention="sdpa", quantization=quant or {"mode": "none"})


def requests_for(engine: Engine, prompts: list[str], limits: list[int]) -> list[Request]:
    ids = engine.tokenize(prompts)
    return [Request(f"r{i}", p, limit) for i, (p, limit) in enumerate(zip(ids, limits, strict=True))]


def check_against_oracle(model, requests: list[Request], done, label: str) -> float:
    """Every row equals `model.generate` of it alone, or first differs by a token in the oracle's top-k
    there; returns (and prints) the share of rows that are exactly equal."""
    assert [c.id for c in done] == [r.id for r in requests]
    eos = model.generation_config.eos_token_id
    exact = 0
    for request, completion in zip(requests, done, strict=True):
        assert completion.error is None, f"{label} {request.id}: {completion.error}"
        got = completion.token_ids[0]
        want = unbatched(model, request.prompt_ids, request.max_new_tokens, eos)
        at = first_divergence(got, want)
        if at is None:
            exact += 1
            continue
        if at < len(got) and at < len(want):
            top, _ = top_tokens(model, request.prompt_ids + want[:at], TOP_K)
            assert got[at] in top, (
                f"{label} {request.id}: token {got[at]} at {at} not in the oracle's top {top}"
            )
    rate = exact / len(requests)
    print(f"{label}: {exact}/{len(requests)} rows equal unbatched generate ({rate:.0%})")
    return rate


@pytest.fixture(scope="module")
def oracle_bf16(small_model):
    """The small model in bf16 with SDPA on the GPU, loaded once: each row alone through its generate."""
    return load_model(bf16(small_model), PlacementConfig())


@pytest.mark.parametrize("strategy", ["padded", "continuous", "generate"])
def test_bf16_sdpa_every_strategy_against_unbatched_generate(small_model, oracle_bf16, strategy):
    engine = Engine(bf16(small_model), SamplingConfig(max_new_tokens=32), BatchingConfig(strategy=strategy))
    try:
        assert engine.strategy == strategy
        assert engine.model.dtype == torch.bfloat16
        assert "sdpa" in engine.model.config._attn_implementation
        assert model_devices(engine.model) == {"cuda:0"}
        requests = requests_for(engine, MIXED, LIMITS)
        done = engine.generate(requests)
    finally:
        engine.close()
    check_against_oracle(oracle_bf16, requests, done, f"bf16 {strategy}")


def test_cascade_attention_over_a_shared_prefix_on_cuda(small_model, oracle_bf16):
    """Rows of one long system prompt on the padded engine in bf16: the prefix is read from one copy by
    cascade attention (not copied into each row's cache), and every row stays within the oracle's top-k."""
    system = "You are a careful assistant. Answer in one short sentence. " * 24
    questions = [f"Question {i}: {q}" for i, q in enumerate(PROMPTS)]
    engine = Engine(
        bf16(small_model),
        SamplingConfig(max_new_tokens=24),
        BatchingConfig(strategy="padded", prefix_sharing=True),
    )
    try:
        requests = requests_for(engine, [system + q for q in questions], [24, 5, 17, 9, 1, 12])
        before = cascade.calls
        done = engine.generate(requests)
        assert engine.generator.layout.copying is None and cascade.calls > before, "cascade did not run"
    finally:
        engine.close()
    check_against_oracle(oracle_bf16, requests, done, "bf16 padded, cascade over a shared prefix")


@pytest.mark.parametrize("mode", ["4bit", "8bit"])
def test_bitsandbytes_on_cuda(small_model, oracle_bf16, mode):
    bnb = pytest.importorskip("bitsandbytes")
    quant = {"mode": mode, "quant_type": "nf4", "double_quant": True}
    engine = Engine(bf16(small_model, **quant), SamplingConfig(max_new_tokens=16), BatchingConfig())
    try:
        down = engine.model.model.layers[0].mlp.down_proj
        assert down.weight.device.type == "cuda"
        if mode == "4bit":
            assert isinstance(down, bnb.nn.Linear4bit)
            assert down.weight.quant_state.quant_type == "nf4"
            assert down.weight.compress_statistics and down.weight.quant_state.nested  # double quant
        else:
            assert isinstance(down, bnb.nn.Linear8bitLt)
            assert down.weight.dtype == torch.int8
        footprint = engine.model.get_memory_footprint() / oracle_bf16.get_memory_footprint()
        print(f"bitsandbytes {mode}: {footprint:.2f} of the bf16 footprint, strategy {engine.strategy}")
        assert footprint < 0.75
        requests = requests_for(engine, MIXED, LIMITS)
        done = engine.generate(requests)
    finally:
        engine.close()  # the continuous manager's thread stops: the model is free for the oracle
    check_against_oracle(engine.model, requests, done, f"bitsandbytes {mode} {engine.strategy}")


def test_device_map_auto_with_max_memory_splits_over_gpu_and_cpu(small_model):
    # ~35 MiB of bf16 weights; 24 MiB on GPU 0 holds the embeddings and a few layers, the rest goes to CPU.
    placement = PlacementConfig(device_map="auto", max_memory={"0": "24MiB", "cpu": "8GiB"})
    engine = Engine(bf16(small_model), SamplingConfig(max_new_tokens=12), BatchingConfig(), placement)
    try:
        assert model_devices(engine.model) == {"cuda:0", "cpu"}, engine.model.hf_device_map
        assert engine.strategy == "padded"  # auto: a split model runs padded (runner.engine.strategy)
        requests = requests_for(engine, MIXED, LIMITS)
        done = engine.generate(requests)
        check_against_oracle(engine.model, requests, done, "device_map auto GPU+CPU")
    finally:
        engine.close()


def long_rows(engine: Engine, count: int, limit: int = 4) -> list[Request]:
    """`count` rows of ~900 prompt tokens each (different texts, so different lengths)."""
    texts = [f"{i} " + PROMPTS[(1, 5)[i % 2]] * 8 for i in range(count)]
    return requests_for(engine, texts, [limit] * count)


def cap_memory(extra_bytes: int) -> None:
    """Let this process reserve only what it holds now plus `extra_bytes` of the GPU."""
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min((torch.cuda.memory_reserved() + extra_bytes) / total, 1.0))


def test_out_of_memory_splits_the_batch_and_retries_for_real(small_model, caplog):
    batching = BatchingConfig(strategy="padded", token_budget=10**7, max_batch_size=64, max_padding=1.0)
    engine = Engine(bf16(small_model), SamplingConfig(), batching)
    rows = long_rows(engine, 32)
    try:
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        assert all(c.error is None for c in engine.generate(rows[:16]))
        half = torch.cuda.max_memory_allocated() - base  # what half the batch needs
        ooms = torch.cuda.memory_stats().get("num_ooms", 0)
        cap_memory(int(1.5 * half) + 16 * 2**20)  # half the batch fits, the whole one does not
        with caplog.at_level(logging.WARNING, logger="runner.engine.memory"):
            done = engine.generate(rows)
        assert torch.cuda.memory_stats()["num_ooms"] > ooms  # the device really ran out
        assert any("out of memory on 32 rows" in r.getMessage() for r in caplog.records)
        assert [c.id for c in done] == [r.id for r in rows]
        assert all(c.error is None and c.token_ids[0] for c in done), [c.error for c in done if c.error]
        print(f"half batch needed {half / 2**20:.0f} MiB; cap {1.5 * half / 2**20:.0f} MiB above the weights")

        cap_memory(2**20)  # now not even one row fits: error rows, never an exception, never a lost row
        lone = engine.generate(rows[:2])
        assert [c.id for c in lone] == ["r0", "r1"]
        assert all("out of memory even as a batch of one" in (c.error or "") for c in lone)
        torch.cuda.set_per_process_memory_fraction(1.0)
        assert engine.generate(rows[:1])[0].error is None  # the engine works again once memory is back
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        engine.close()


def test_token_budget_follows_free_memory_and_a_full_batch_fits_in_it(small_model):
    free, _ = torch.cuda.mem_get_info()
    fraction = 256 * 2**20 / free  # a budget of ~256 MiB keeps the batch small and the test fast
    batching = BatchingConfig(strategy="padded", memory_fraction=fraction, max_batch_size=256)
    engine = Engine(bf16(small_model), SamplingConfig(), batching)
    try:
        per_token = bytes_per_token(engine.model)
        free_now, _ = torch.cuda.mem_get_info()
        budget = engine.generator.budget
        assert budget == pytest.approx(free_now * fraction / per_token, rel=0.01)
        rows = long_rows(engine, 64, limit=24)
        cost = max(len(r.prompt_ids) for r in rows) + 24
        rows = rows[: budget // cost]  # one planned batch, as close to the budget as these rows go
        assert len(engine.generator.plan(rows)) == 1
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        done = engine.generate(rows)
        used = torch.cuda.max_memory_allocated() - base
    finally:
        engine.close()
    assert all(c.error is None for c in done)
    claimed = budget * per_token
    print(
        f"token budget {budget} positions x {per_token} B = {claimed / 2**20:.0f} MiB; a batch of "
        f"{len(rows)} rows ({len(rows) * cost} positions) used {used / 2**20:.0f} MiB ({used / claimed:.2f})"
    )
    assert used <= claimed  # bytes_per_token is meant as an upper-side estimate (runner.engine.memory)
