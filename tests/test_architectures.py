"""The architecture matrix: every strategy of the real Engine, on tiny random models of many families,
row by row against each row's unbatched greedy `model.generate`; or refused at start with our error.

The models are built once per session (tests/arch_models.py); the reference once per model. Prompts run
from 1 token to several sliding windows and past one continuous-batching prefill chunk (> 512 tokens),
each with its own max_new_tokens.
"""

from __future__ import annotations

import pytest
import torch

from runner.config import BatchingConfig, ModelConfig, SamplingConfig
from runner.engine import Engine, Request
from runner.engine.architecture import Architecture, continuous_refusal, padded_refusal
from runner.engine.engine import choose_strategy
from runner.engine.loading import AttentionSupport, Devices, resolve_attention
from runner.errors import ConfigError
from tests import arch_models
from tests.arch_models import LIMITS, PROMPTS, SPECS

STRATEGIES = ["auto", "padded", "continuous", "generate"]
CPU = Devices(cuda=False, gpu_count=0, bf16=False)
GPU = Devices(cuda=True, gpu_count=1, bf16=True)


@pytest.fixture(scope="session")
def arch_root(tmp_path_factory):
    return tmp_path_factory.mktemp("architectures")


@pytest.fixture(scope="session")
def built(arch_root):
    """name -> saved model directory, each built on first use."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = arch_models.build(arch_models.BY_NAME[name], arch_root)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def expected(built):
    """name -> the unbatched greedy reference tokens of every matrix row, computed once per model."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            from transformers import AutoTokenizer

            from runner.engine.loading import load_tokenizer

            path = built(name)
            tokenizer = load_tokenizer(ModelConfig(path=str(path)))
            assert isinstance(tokenizer, type(AutoTokenizer.from_pretrained(path)))
            ids = tokenizer(PROMPTS, add_special_tokens=True)["input_ids"]
            cache[name] = arch_models.reference(path, ids, LIMITS)
        return cache[name]

    return get


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_every_row_equals_the_unbatched_reference_or_is_refused_at_start(spec, strategy, built, expected):
    outcome = arch_models.run(built(spec.name), strategy, expected(spec.name))
    if strategy in spec.refuses:
        assert outcome.refused is not None, f"{spec.name}: {strategy} ran instead of being refused"
        assert outcome.refused.startswith(f"batching.strategy: {strategy} cannot be exact for ")
        assert "\n" not in outcome.refused and "use " in outcome.refused
        return
    assert outcome.refused is None, outcome.refused
    assert outcome.strategy == (spec.auto if strategy == "auto" else strategy)
    assert outcome.mismatched == [], f"{spec.name} under {outcome.strategy}: rows {outcome.mismatched} differ"


def test_the_matrix_covers_what_the_issue_lists():
    covered = " ".join(s.covers for s in SPECS)
    for feature in [
        "grouped-query",
        "uniform sliding window",
        "interleaved sliding/full",
        "eager only",
        "soft-capping",
        "Mixtral",
        "OLMoE",
        "learned absolute positions",
        "ALiBi",
        "parallel attention",
        "partial rotary",
        "multi-query",
        "state-space",
        "attention sinks",
        "several EOS ids",
        "no pad token",
        "no BOS token",
    ]:
        assert feature in covered, feature
    assert len(SPECS) >= 15


def test_prompts_outgrow_the_window_and_the_prefill_chunk(built):
    from runner.engine.loading import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(path=str(built("mistral"))))
    lengths = sorted(len(ids) for ids in tokenizer(PROMPTS)["input_ids"])
    assert lengths[0] == 1 and lengths[-2] > 3 * arch_models.WINDOW and lengths[-1] > 512
    assert len(set(LIMITS)) == len(LIMITS)  # every row its own max_new_tokens


def test_a_second_eos_id_really_stops_a_row(built, expected):
    from transformers import GenerationConfig

    eos = GenerationConfig.from_pretrained(built("llama-rope-linear")).eos_token_id
    assert isinstance(eos, list) and len(eos) == 2
    assert any(
        len(tokens) < limit for tokens, limit in zip(expected("llama-rope-linear"), LIMITS, strict=True)
    )


def test_sampled_rows_draw_the_same_tokens_in_every_strategy(built):
    """The generate strategy adds the same keyed noise at the same positions as the others."""
    draws = []
    for strategy in ["padded", "continuous", "generate"]:
        sampling = SamplingConfig(temperature=0.8, top_k=50, seed=5, n=2, max_new_tokens=8)
        engine = Engine(
            ModelConfig(path=str(built("llama")), dtype="float32"),
            sampling,
            BatchingConfig(strategy=strategy, token_budget=8192),
        )
        ids = engine.tokenize(PROMPTS[:4])
        draws.append(
            [c.token_ids for c in engine.generate([Request(str(i), p, 8) for i, p in enumerate(ids)])]
        )
        engine.close()
    assert draws[0] == draws[1] == draws[2]
    assert any(row[0] != row[1] for row in draws[0])


def test_auto_picks_continuous_on_one_gpu_only_where_it_is_exact(built):
    from transformers import AutoModelForCausalLM

    for name, gpu_choice in [("gemma2", "continuous"), ("falcon", "padded"), ("mamba", "generate")]:
        model = AutoModelForCausalLM.from_pretrained(built(name), dtype=torch.float32)
        strategy, why = choose_strategy("auto", {"cuda:0"}, Architecture.of(model))
        assert strategy == gpu_choice, (name, why)
        assert why.startswith("auto: ")


def test_refusals_name_the_reason():
    plain = Architecture("M", ("full_attention",) * 2, False, True, True, frozenset(), None)
    assert padded_refusal(plain) is None and continuous_refusal(plain) is None
    hybrid = Architecture("J", ("full_attention", "linear_attention"), False, True, True, frozenset(), None)
    assert "linear_attention layers" in padded_refusal(hybrid)
    chunked = Architecture("L4", ("chunked_attention",), False, True, True, frozenset(), None)
    assert "chunked_attention" in continuous_refusal(chunked)
    longrope = Architecture("P3", ("full_attention",), False, True, True, frozenset({"longrope"}), None)
    assert "longrope rotary scaling" in padded_refusal(longrope)
    with pytest.raises(
        ConfigError, match=r"^batching.strategy: padded cannot be exact for J: .*; use generate"
    ):
        choose_strategy("padded", {"cpu"}, hybrid)


def test_attention_auto_falls_back_by_what_the_model_class_supports():
    eager_only = AttentionSupport(model="BloomForCausalLM", flash=False, sdpa=False)
    assert resolve_attention("auto", CPU, torch.float32, eager_only)[0] == "eager"
    assert resolve_attention("auto", CPU, torch.float32, AttentionSupport("Gemma2", sdpa=False))[0] == "eager"
    assert resolve_attention("auto", CPU, torch.float32, AttentionSupport("Llama"))[0] == "sdpa"
    with pytest.raises(
        ConfigError, match=r"^model.attention: BloomForCausalLM does not support sdpa; use eager$"
    ):
        resolve_attention("sdpa", CPU, torch.float32, eager_only)
    with pytest.raises(ConfigError, match=r"^model.attention: .*flash_attention_2"):
        resolve_attention("flash_attention_2", GPU, torch.bfloat16, eager_only)
    assert resolve_attention("eager", CPU, torch.float32, eager_only) == ("eager", "set in config")


def test_an_explicit_attention_the_model_cannot_use_fails_while_the_engine_is_built(built):
    with pytest.raises(ConfigError, match=r"^model.attention: BloomForCausalLM does not support sdpa"):
        Engine(ModelConfig(path=str(built("bloom")), attention="sdpa"), SamplingConfig())
