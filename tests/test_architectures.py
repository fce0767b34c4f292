"""The architecture matrix: every strategy of the real Engine, on tiny random models of many families,
row by row against each row's unbatched greedy `model.generate`; or refused at start with our error.

The models are built once per session (tests/arch_models.py); the reference once per model. Prompts run
from 1 token to several sliding windows and past one continuous-batching prefill chunk (> 512 tokens),
each with its own max_new_tokens.
"""

from __future__ import annotations

import pytest
import torch

from runner import compat
from runner.config import BatchingConfig, ModelConfig, SamplingConfig
from runner.engine import Engine, Request
from runner.engine.architecture import Architecture, continuous_refusal, padded_refusal
from runner.engine.loading import AttentionSupport, Devices, resolve_attention
from runner.engine.strategy import choose_strategy
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
            from runner.engine.loading import load_tokenizer

            path = built(name)
            tokenizer = load_tokenizer(ModelConfig(path=str(path)))
            ids = tokenizer(PROMPTS, add_special_tokens=True)["input_ids"]
            cache[name] = arch_models.reference(path, ids, LIMITS)
        return cache[name]

    return get


# Where transformers' own model code breaks a strategy from some version on, the engine's start-up probe
# must refuse it at start naming the version (never run it inexactly, never hang): (arch, strategy) ->
# (first broken transformers version, what breaks).
LIBRARY_BREAKS = {
    ("opt", "continuous"): ("5.24", "OPT's forward asks the paged cache for get_seq_length"),
    ("gpt_neox", "continuous"): ("5.24", "GPT-NeoX calls the paged cache's update without its kwargs"),
}
# Where a later transformers declares what the architecture check needs (here GPT-J's attention through
# the attention interface, `_supports_attention_backend`), the strategy becomes exact and must run.
DECLARED_FROM = {("gptj", "continuous"): "5.24"}


def _refuses(spec, strategy: str) -> bool:
    since = DECLARED_FROM.get((spec.name, strategy))
    return strategy in spec.refuses and not (since and compat.at_least("transformers", since))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("spec", arch_models.params(SPECS))
def test_every_row_equals_the_unbatched_reference_or_is_refused_at_start(spec, strategy, built, expected):
    outcome = arch_models.run(built(spec.name), strategy, expected(spec.name))
    broken = LIBRARY_BREAKS.get((spec.name, strategy))
    if broken and compat.at_least("transformers", broken[0]):
        assert outcome.refused is not None, f"{spec.name}: {strategy} ran although {broken[1]}"
        assert outcome.refused.startswith(f"batching.strategy: {strategy} fails on ")
        assert (
            f"transformers {compat.version('transformers')}" in outcome.refused
            and "\n" not in outcome.refused
        )
        return
    if _refuses(spec, strategy):
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
    plain = Architecture("M", ("full_attention",) * 2, False, True, True, frozenset())
    assert padded_refusal(plain) is None and continuous_refusal(plain) is None
    hybrid = Architecture("J", ("full_attention", "linear_attention"), False, True, True, frozenset())
    assert "linear_attention layers" in padded_refusal(hybrid)
    chunked = Architecture("L4", ("chunked_attention",), False, True, True, frozenset())
    assert "chunked_attention" in continuous_refusal(chunked)
    longrope = Architecture("P3", ("full_attention",), False, True, True, frozenset({"longrope"}))
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


def test_flash_attention_does_not_count_for_a_model_that_lists_other_flash_kernels():
    from transformers import GptOssForCausalLM, LlamaForCausalLM

    assert not AttentionSupport.of(GptOssForCausalLM).flash and AttentionSupport.of(LlamaForCausalLM).flash


def test_the_token_budget_estimate_covers_a_state_space_model(built):
    from transformers import AutoModelForCausalLM

    from runner.engine.memory import bytes_per_token

    assert bytes_per_token(AutoModelForCausalLM.from_pretrained(built("mamba"))) > 0


def _attend(q, k, v, q_pos, k_pos, window, softcap, sinks):
    """Reference attention of one sequence by absolute positions [heads, q, d] (keys repeated per group)."""
    k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    v = v.repeat_interleave(q.shape[0] // v.shape[0], dim=0)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    distance = q_pos[:, None] - k_pos[None, :]
    seen = (distance >= 0) & ((distance < window) if window else True)
    scores = scores.masked_fill(~seen, float("-inf"))
    if sinks is not None:
        scores = torch.cat([scores, sinks[:, None, None].expand(-1, scores.shape[1], 1)], dim=-1)
        return scores.softmax(-1)[..., :-1] @ v
    return scores.softmax(-1) @ v


@pytest.mark.parametrize(
    ("window", "softcap", "sinks"), [(None, None, False), (4, None, False), (4, 0.5, False), (3, None, True)]
)
def test_paged_attention_applies_windows_softcaps_and_sinks_per_sequence(window, softcap, sinks):
    """Packed sequences as a sliding group's paged cache returns them: a prefill longer than the window,
    a decode step, and a prefill chunk after cached keys."""
    from runner.engine.paged_attention import _sequence_loop

    torch.manual_seed(0)
    shapes = [(7, 7, 0), (1, 5, 12), (6, 9, 20)]  # (new queries, keys incl. cache, first key position)
    cu_q = torch.tensor([0, 7, 8, 14])
    cu_k = torch.tensor([0, 7, 12, 21])
    query, key, value = torch.randn(1, 4, 14, 8) * 3, torch.randn(1, 2, 21, 8), torch.randn(1, 2, 21, 8)
    sink = torch.randn(4) if sinks else None
    layer = {"window": window, "softcap": softcap, "sinks": sink}
    out = _sequence_loop(query, key, value, {"cu_seq_lens_q": cu_q, "cu_seq_lens_k": cu_k}, None, layer)
    for i, (q_len, k_len, start) in enumerate(shapes):
        k_pos = torch.arange(start, start + k_len)
        q_pos = k_pos[-q_len:]
        expected = _attend(
            query[0, :, cu_q[i] : cu_q[i + 1]],
            key[0, :, cu_k[i] : cu_k[i + 1]],
            value[0, :, cu_k[i] : cu_k[i + 1]],
            q_pos,
            k_pos,
            window,
            softcap,
            sink,
        ).transpose(0, 1)
        assert torch.allclose(out[0, cu_q[i] : cu_q[i + 1]], expected, atol=1e-5), (i, window, softcap)


def test_the_generate_strategy_ignores_generation_settings_of_the_checkpoint(built, tmp_path):
    """A checkpoint's repetition penalty is not part of the job: every strategy computes the same rows."""
    import shutil

    from transformers import GenerationConfig

    path = tmp_path / "llama-penalised"
    shutil.copytree(built("llama"), path)
    settings = GenerationConfig.from_pretrained(path)
    settings.repetition_penalty, settings.no_repeat_ngram_size = 5.0, 1
    settings.save_pretrained(path)
    rows = {}
    for strategy in ["padded", "generate"]:
        engine = Engine(
            ModelConfig(path=str(path), dtype="float32"), SamplingConfig(), BatchingConfig(strategy=strategy)
        )
        ids = engine.tokenize(PROMPTS[:5])
        rows[strategy] = [
            c.token_ids for c in engine.generate([Request(str(i), p, 12) for i, p in enumerate(ids)])
        ]
        engine.close()
    assert rows["generate"] == rows["padded"]
    assert any(len(set(r[0])) < len(r[0]) for r in rows["padded"])  # rows repeat: a penalty would show


def test_a_strategy_failing_at_start_is_skipped_by_auto_and_refused_when_explicit(built, monkeypatch, caplog):
    """Something no property announces makes a strategy fail: found by the start-up probe, not per row."""
    from runner.engine.padded import PaddedGenerator

    def broken(self, requests):
        raise RuntimeError("The size of tensor a (8) must match the size of tensor b (351)")

    monkeypatch.setattr(PaddedGenerator, "run", broken)
    model = ModelConfig(path=str(built("llama")), dtype="float32")
    with caplog.at_level("WARNING"):
        engine = Engine(model, SamplingConfig(max_new_tokens=3), BatchingConfig(strategy="auto"))
    assert engine.strategy == "continuous" and "strategy padded fails on LlamaForCausalLM" in caplog.text
    engine.close()
    with pytest.raises(
        ConfigError,
        match=r"^batching.strategy: padded fails on LlamaForCausalLM at start \(RuntimeError: The size .*\); "
        r"use continuous or generate \(or auto\)$",
    ):
        Engine(model, SamplingConfig(), BatchingConfig(strategy="padded"))


def test_auto_logs_the_strategy_and_attention_it_picked_and_why(built, caplog):
    with caplog.at_level("INFO"):
        engine = Engine(ModelConfig(path=str(built("bloom")), dtype="float32"), SamplingConfig())
    engine.close()
    assert "attention: eager (FlashAttention-2 not used: BloomForCausalLM does not support it;" in caplog.text
    assert (
        "strategy generate for BloomForCausalLM: auto: padded is not exact for BloomForCausalLM "
        "(its forward takes no position_ids" in caplog.text
    )


def test_generation_options_the_generate_strategy_cannot_honour_are_refused_at_start(built):
    """A grammar or a penalty on a model only `generate` runs exactly: one line at start, not ignored."""
    path = str(built("mamba"))
    for sampling, field in [
        (SamplingConfig(choices=["yes", "no"]), "sampling.choices"),
        (SamplingConfig(repetition_penalty=1.3), "sampling.repetition_penalty"),
    ]:
        with pytest.raises(ConfigError, match=rf"^{field}: not supported for Mamba\w+, which runs with the"):
            Engine(ModelConfig(path=path, dtype="float32"), sampling, BatchingConfig())


def test_row_options_on_the_generate_strategy_become_error_rows_and_stop_token_ids_end_rows(built):
    """Rows carrying their own options are never run without them; stop_token_ids cut like EOS."""
    from runner.engine.types import RowSampling

    path = str(built("mamba"))
    engine = Engine(ModelConfig(path=path, dtype="float32"), SamplingConfig(), BatchingConfig())
    assert engine.strategy == "generate" and not engine.row_options_supported
    ids = engine.tokenize(PROMPTS[:2])
    plain = engine.generate([Request("a", ids[0], 8)])[0]
    row = Request("b", ids[1], 8, sampling=RowSampling(seed=3))
    flagged = engine.generate([row])[0]
    assert flagged.error and "not supported by the generate strategy" in flagged.error
    engine.close()
    stop = plain.token_ids[0][min(2, len(plain.token_ids[0]) - 1)]
    engine = Engine(
        ModelConfig(path=path, dtype="float32"), SamplingConfig(stop_token_ids=[stop]), BatchingConfig()
    )
    cut = engine.generate([Request("a", ids[0], 8)])[0]
    engine.close()
    first = plain.token_ids[0].index(stop)
    assert cut.token_ids == [plain.token_ids[0][:first]] and cut.finish_reasons == ["stop"]
