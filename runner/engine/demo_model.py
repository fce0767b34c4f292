"""A small Llama-shaped model and tokenizer built locally, so the demo and tests need no download.

`demo:tiny-llama` in `model.path` resolves here: the model is built once into a cache directory
(random weights, fixed seed, byte-level BPE tokenizer trained in-process) and then loaded like any
saved Hugging Face model. Linear sizes are multiples of 64 so bitsandbytes 4-bit runs on CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

DEMO_PREFIX = "demo:"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]

SIZES = {
    # name: (hidden, intermediate, layers, heads, kv_heads, vocab)
    "tiny-llama": (128, 256, 2, 4, 2, 1024),
    "small-llama": (512, 1408, 6, 8, 4, 4096),
    # ~1B parameters in its 16 decoder layers (Llama-3.2-1B-like widths), for scripts/bench.py --gpu
    "bench-1b": (2048, 8192, 16, 32, 8, 4096),
}

_CORPUS = """The quick brown fox jumps over the lazy dog. Write a short poem about the sea.
Explain how a transformer model predicts the next token. Summarise the history of Rome in three lines.
What is the capital of France? Translate 'good morning' into Spanish, German and Japanese.
List five prime numbers and explain why each is prime. Describe a sunset over the mountains.
Données, café, naïve, 東京, 서울, القاهرة, emoji 🚀 and other unicode text should tokenize too.
def add(a, b): return a + b  # code appears in prompts as well
"""


def cache_dir() -> Path:
    """Where built demo models live (override with RUNNER_CACHE)."""
    return Path(os.environ.get("RUNNER_CACHE", Path.home() / ".cache" / "hf-batch-runner"))


def is_demo(path: str) -> bool:
    return path.startswith(DEMO_PREFIX)


def resolve_demo(path: str) -> str:
    """`demo:NAME` -> a local directory holding that model, built on first use."""
    name = path[len(DEMO_PREFIX) :]
    if name not in SIZES:
        raise ValueError(f"model.path: unknown demo model {name!r} (known: {', '.join(SIZES)})")
    target = cache_dir() / name
    if not (target / "config.json").exists():
        build_model(target, name)
    return str(target)


def build_tokenizer(vocab_size: int):
    """Train a byte-level BPE tokenizer in-process and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    # Pad the vocabulary to a multiple of 64 so every embedding / lm_head size is bitsandbytes friendly.
    fast.add_tokens([f"<extra_{i}>" for i in range(-len(fast) % 64)])
    return fast


def build_model(target: Path, name: str = "tiny-llama", seed: int = 0) -> Path:
    """Build and save a randomly initialised Llama model + tokenizer into `target` (atomically)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, heads, kv_heads, vocab = SIZES[name]
    tokenizer = build_tokenizer(vocab)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Random weights give near-uniform logits; a wider init makes greedy choices decisive, so
    # batched-vs-unbatched equality tests are not at the mercy of float rounding ties.
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target) if not target.exists() else None
    return target
