"""The architecture matrix: tiny random decoder-only models of many families, built locally.

Each entry is a transformers config class and its arguments (2 layers, hidden 64, linear sizes
multiples of 64, the demo's trained byte-level BPE tokenizer), plus what it covers and the strategy
`auto` is expected to pick for it on CPU. `build(spec, root)` saves the model and tokenizer as a
Hugging Face directory that the engine loads through its real loading path. Used by
tests/test_architectures.py and scripts/architectures.py (which prints the README table).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

VOCAB = 512
WINDOW = 16  # sliding windows far shorter than the long prompts
CONTEXT = 1024
COMMON = {"vocab_size": VOCAB, "max_position_embeddings": CONTEXT, "tie_word_embeddings": False}
LLAMA_LIKE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


@dataclass(frozen=True)
class Spec:
    """One architecture of the matrix."""

    name: str
    config: str  # transformers config class name
    kwargs: dict
    covers: str
    auto: str  # the strategy auto must pick on CPU
    refuses: frozenset = frozenset()  # explicit strategies the engine must refuse at start
    tokenizer: str = "standard"  # standard | no-pad | no-bos | multi-eos


SPECS = [
    Spec("llama", "LlamaConfig", {**COMMON, **LLAMA_LIKE}, "grouped-query attention", "padded"),
    Spec(
        "llama-rope-linear",
        "LlamaConfig",
        {
            **COMMON,
            **LLAMA_LIKE,
            "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
        },
        "rope_scaling (linear), several EOS ids",
        "padded",
        tokenizer="multi-eos",
    ),
    Spec(
        "llama-rope-dynamic",
        "LlamaConfig",
        {
            **COMMON,
            **LLAMA_LIKE,
            "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4},
        },
        "rope_scaling (dynamic NTK: depends on the batch's longest row)",
        "generate",
        refuses=frozenset({"padded", "continuous"}),
    ),
    Spec(
        "mistral",
        "MistralConfig",
        {**COMMON, **LLAMA_LIKE, "sliding_window": WINDOW},
        "uniform sliding window, no BOS token",
        "padded",
        tokenizer="no-bos",
    ),
    Spec(
        "qwen2",
        "Qwen2Config",
        {
            **COMMON,
            **LLAMA_LIKE,
            "use_sliding_window": True,
            "sliding_window": WINDOW,
            "max_window_layers": 1,
            "initializer_range": 0.1,  # sharper attention: a missing window changes the text
        },
        "full then sliding layers (layer_types), qkv bias",
        "padded",
    ),
    Spec(
        "gemma2",
        "Gemma2Config",
        {
            **COMMON,
            **LLAMA_LIKE,
            "head_dim": 16,
            "sliding_window": WINDOW,
            "attn_logit_softcapping": 1.0,
            "final_logit_softcapping": 3.0,
            "query_pre_attn_scalar": 16,
            "initializer_range": 0.2,  # attention scores large enough for the soft-cap to change the text
        },
        "interleaved sliding/full, attention and final logit soft-capping, eager only",
        "padded",
    ),
    Spec(
        "gemma3",
        "Gemma3TextConfig",
        {
            **COMMON,
            **LLAMA_LIKE,
            "head_dim": 16,
            "sliding_window": WINDOW,
            "layer_types": ["sliding_attention", "full_attention"],
            "query_pre_attn_scalar": 16,
        },
        "interleaved sliding/full (layer_types), per-layer-type rope",
        "padded",
    ),
    Spec(
        "mixtral",
        "MixtralConfig",
        {**COMMON, **LLAMA_LIKE, "num_local_experts": 4, "num_experts_per_tok": 2},
        "mixture of experts (Mixtral)",
        "padded",
    ),
    Spec(
        "qwen2_moe",
        "Qwen2MoeConfig",
        {
            **COMMON,
            **LLAMA_LIKE,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 64,
            "shared_expert_intermediate_size": 64,
        },
        "mixture of experts with a shared expert (Qwen2-MoE)",
        "padded",
    ),
    Spec(
        "olmoe",
        "OlmoeConfig",
        {**COMMON, **LLAMA_LIKE, "num_experts": 4, "num_experts_per_tok": 2},
        "mixture of experts (OLMoE), q/k norm",
        "padded",
    ),
    Spec(
        "gpt_oss",
        "GptOssConfig",
        {
            **COMMON,
            **LLAMA_LIKE,
            "head_dim": 16,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "sliding_window": WINDOW,
            "layer_types": ["sliding_attention", "full_attention"],
        },
        "attention sinks, interleaved sliding/full, MoE, eager only",
        "padded",
    ),
    Spec(
        "gpt2",
        "GPT2Config",
        {"vocab_size": VOCAB, "n_positions": CONTEXT, "n_embd": 64, "n_layer": 2, "n_head": 4},
        "learned absolute positions, no pad token",
        "padded",
        tokenizer="no-pad",
    ),
    Spec(
        "opt",
        "OPTConfig",
        {
            "vocab_size": VOCAB,
            "max_position_embeddings": CONTEXT,
            "hidden_size": 64,
            "ffn_dim": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "word_embed_proj_dim": 64,
        },
        "learned absolute positions (offset 2)",
        "padded",
    ),
    Spec(
        "bloom",
        "BloomConfig",
        {"vocab_size": VOCAB, "hidden_size": 64, "n_layer": 2, "n_head": 4},
        "ALiBi, no SDPA support (eager)",
        "generate",
        refuses=frozenset({"padded", "continuous"}),
    ),
    Spec(
        "mpt",
        "MptConfig",
        {"vocab_size": VOCAB, "d_model": 64, "n_heads": 4, "n_layers": 2, "max_seq_len": CONTEXT},
        "ALiBi, no SDPA support (eager)",
        "generate",
        refuses=frozenset({"padded", "continuous"}),
    ),
    Spec(
        "gptj",
        "GPTJConfig",
        {
            "vocab_size": VOCAB,
            "n_positions": CONTEXT,
            "n_embd": 64,
            "n_layer": 2,
            "n_head": 4,
            "rotary_dim": 8,
        },
        "parallel attention + MLP, partial rotary, no SDPA support (eager)",
        "padded",
        refuses=frozenset({"continuous"}),
    ),
    Spec(
        "gpt_neox",
        "GPTNeoXConfig",
        {
            **COMMON,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "rotary_pct": 0.25,
            "use_parallel_residual": True,
        },
        "parallel residual, partial rotary",
        "padded",
    ),
    Spec(
        "falcon",
        "FalconConfig",
        {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "multi_query": True,
            "parallel_attn": True,
            "new_decoder_architecture": False,
            "alibi": False,
            "max_position_embeddings": CONTEXT,
        },
        "multi-query attention, parallel attention",
        "padded",
        refuses=frozenset({"continuous"}),
    ),
    Spec(
        "gpt_bigcode",
        "GPTBigCodeConfig",
        {
            "vocab_size": VOCAB,
            "n_positions": CONTEXT,
            "n_embd": 64,
            "n_layer": 2,
            "n_head": 4,
            "multi_query": True,
        },
        "multi-query attention, learned positions",
        "padded",
    ),
    Spec(
        "phi",
        "PhiConfig",
        {**COMMON, **LLAMA_LIKE, "num_key_value_heads": 4, "partial_rotary_factor": 0.5},
        "partial rotary, parallel attention",
        "padded",
    ),
    Spec(
        "stablelm",
        "StableLmConfig",
        {**COMMON, **LLAMA_LIKE, "partial_rotary_factor": 0.25},
        "partial rotary, attention outside transformers' interface",
        "padded",
        refuses=frozenset({"continuous"}),
    ),
    Spec(
        "mamba",
        "MambaConfig",
        {"vocab_size": VOCAB, "hidden_size": 64, "state_size": 16, "num_hidden_layers": 2, "expand": 2},
        "state-space model (recurrent cache)",
        "generate",
        refuses=frozenset({"padded", "continuous"}),
    ),
    Spec(
        "jamba",
        "JambaConfig",
        {
            **COMMON,
            **LLAMA_LIKE,
            "num_experts": 2,
            "num_experts_per_tok": 1,
            "expert_layer_period": 2,
            "expert_layer_offset": 1,
            "attn_layer_period": 2,
            "attn_layer_offset": 1,
            "use_mamba_kernels": False,
        },
        "hybrid state-space + attention + MoE",
        "generate",
        refuses=frozenset({"padded", "continuous"}),
    ),
]
BY_NAME = {s.name: s for s in SPECS}

# The inner loop (`pytest -m "not slow"`) runs the matrix for one architecture of each kind the engine
# treats apart: plain grouped-query attention, sliding windows with soft-capping, learned positions,
# ALiBi (refused) and a state-space model (refused); the whole suite runs every architecture.
INNER_LOOP = ("llama", "gemma2", "gpt2", "bloom", "mamba")


def params(specs: list[Spec]) -> list:
    """`specs` as pytest parameters named after the architecture, those outside `INNER_LOOP` marked slow."""
    import pytest

    return [pytest.param(s, id=s.name, marks=() if s.name in INNER_LOOP else pytest.mark.slow) for s in specs]


def build_tokenizer(root: Path, variant: str):
    """The demo's BPE tokenizer, adjusted to a variant (no pad token, no BOS)."""
    from runner.engine.demo_model import build_tokenizer as demo_tokenizer

    tokenizer = demo_tokenizer(VOCAB)
    if variant == "no-pad":
        tokenizer.pad_token = None
    if variant == "no-bos":
        tokenizer.bos_token = None
    return tokenizer


def _special_ids(tokenizer) -> dict:
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    return ids | {"pad_token_id": tokenizer.pad_token_id}


def build(spec: Spec, root: Path, seed: int = 0) -> Path:
    """Build the spec's random model + tokenizer into root/name (once) and return the directory."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    target = root / spec.name
    if (target / "config.json").exists():
        return target
    tokenizer = build_tokenizer(root, spec.tokenizer)
    config = getattr(transformers, spec.config)(**spec.kwargs, **_special_ids(tokenizer))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Near-uniform random logits make greedy choices fragile ties; a wider head makes them decisive
    # (as runner.engine.demo_model does), so batched and unbatched runs agree unless the batching is wrong.
    with torch.no_grad():
        model.get_output_embeddings().weight.normal_(0, 0.5)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if spec.tokenizer == "multi-eos":
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, _frequent_token(model, tokenizer)]
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)
    return target


def _frequent_token(model, tokenizer) -> int:
    """A token this model generates greedily early on, made a second EOS so rows really stop on it."""
    ids = tokenizer(PROMPTS[2], return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return int(out[0, ids.shape[1] + 2])


_SEA = "Write a short poem about the sea and the sky and everything in between. "
PROMPTS = [
    "Hello",
    "x",
    "What is the capital of France?",
    "東京 서울 القاهرة 🚀 naïve café",
    _SEA * 4,  # several windows long
    "List five prime numbers and explain why each is prime, step by step. " * 30,  # > 512 tokens
]
LIMITS = [6, 1, 12, 9, 10, 5]  # per-row max_new_tokens


def eos_list(model) -> list[int]:
    eos = model.generation_config.eos_token_id
    return [e for e in (eos if isinstance(eos, list) else [eos]) if e is not None]


def reference(path: Path, prompt_ids: list[list[int]], limits: list[int]) -> list[list[int]]:
    """The oracle: each row alone through `model.generate` (greedy, the model's default attention),
    cut at its first EOS."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return [generate_one(model, ids, limit) for ids, limit in zip(prompt_ids, limits, strict=True)]


def generate_one(model, prompt_ids: list[int], limit: int) -> list[int]:
    """One row alone through the loaded `model`'s greedy `generate`, cut at its first EOS."""
    import torch

    eos = eos_list(model)
    pad = model.generation_config.pad_token_id
    generated = model.generate(
        torch.tensor([prompt_ids]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        max_new_tokens=limit,
        do_sample=False,
        eos_token_id=eos or None,
        pad_token_id=pad if pad is not None else (eos or [0])[0],
    )[0, len(prompt_ids) :].tolist()
    return generated[: next((i for i, t in enumerate(generated) if t in eos), len(generated))]


@dataclass
class Outcome:
    """What one strategy did for one architecture."""

    strategy: str  # the strategy the engine ran (auto resolved)
    attention: str = ""
    refused: str | None = None  # the ConfigError line, when the engine refused at start
    mismatched: list[int] | None = None  # rows whose tokens differ from the reference


def run(path: Path, strategy: str, expected: list[list[int]] | None = None) -> Outcome:
    """Build an Engine for the model with `strategy` and compare every row with `expected`."""
    from runner.config import BatchingConfig, ModelConfig, SamplingConfig
    from runner.engine import Engine, Request
    from runner.errors import ConfigError

    batching = BatchingConfig(strategy=strategy, token_budget=8192, max_batch_size=8)
    try:
        engine = Engine(ModelConfig(path=str(path), dtype="float32"), SamplingConfig(), batching)
    except ConfigError as err:
        return Outcome(strategy, refused=str(err))
    try:
        ids = engine.tokenize(PROMPTS)
        expected = expected if expected is not None else reference(path, ids, LIMITS)
        done = engine.generate(
            [Request(f"r{i}", p, n) for i, (p, n) in enumerate(zip(ids, LIMITS, strict=True))]
        )
        bad = [
            i for i, (c, e) in enumerate(zip(done, expected, strict=True)) if c.token_ids != [e] or c.error
        ]
        return Outcome(engine.strategy, engine.model.config._attn_implementation, mismatched=bad)
    finally:
        engine.close()
