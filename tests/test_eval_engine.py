"""`Engine.score` (log-likelihood of a continuation) against unbatched forward passes of the model, for
several architectures: rotary attention (Llama), a sliding window (Mistral), learned absolute positions
(GPT-2), ALiBi (Bloom) and a state-space model (Mamba). Right padding must leave every real token's
log-probability as the model computes it alone."""

from __future__ import annotations

import random

import pytest
import torch

from runner.config import BatchingConfig, ModelConfig, SamplingConfig
from runner.engine.scoring import LoglikelihoodScorer, ScoreRequest, plan_batches

VOCAB = 96


def tiny(arch: str):
    import transformers as tf

    torch.manual_seed(0)
    configs = {
        "llama": lambda: tf.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
        ),
        "mistral-sliding": lambda: tf.MistralConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=4,
        ),
        "gpt2": lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128),
        "bloom-alibi": lambda: tf.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4),
        "mamba": lambda: tf.MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8),
    }
    config = configs[arch]()
    config.pad_token_id = 0
    model = tf.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager" if arch != "mamba" else None
    )
    return model.eval()


def unbatched(model, request: ScoreRequest) -> tuple[float, bool]:
    """The reference: the pair alone, one forward pass, no padding."""
    ids = torch.tensor([request.context_ids + request.continuation_ids])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0].float().log_softmax(-1)
    n = len(request.context_ids)
    rows = logprobs[n - 1 : n - 1 + len(request.continuation_ids)]
    target = torch.tensor(request.continuation_ids)
    return rows.gather(-1, target[:, None]).sum().item(), bool((rows.argmax(-1) == target).all())


def requests(seed: int = 0, count: int = 11) -> list[ScoreRequest]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        context = [rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 20))]
        continuation = [rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 6))]
        out.append(ScoreRequest(f"r{i}", context, continuation))
    return out


@pytest.mark.parametrize("arch", ["llama", "mistral-sliding", "gpt2", "bloom-alibi", "mamba"])
def test_batched_scores_equal_unbatched_forward(arch):
    model = tiny(arch)
    # A small budget and batch size: rows of different lengths share batches, and there are several.
    scorer = LoglikelihoodScorer(model, BatchingConfig(token_budget=64, max_batch_size=4))
    reqs = requests()
    assert len(plan_batches(reqs, scorer.budget, 4)) > 2
    results = scorer.score(reqs)
    assert [r.id for r in results] == [r.id for r in reqs]  # request order, whatever the batch order
    for request, result in zip(reqs, results, strict=True):
        logprob, greedy = unbatched(model, request)
        assert result.error is None
        assert result.logprob == pytest.approx(logprob, abs=1e-4), request.id
        assert result.greedy == greedy


def test_greedy_flag_is_true_exactly_for_the_models_own_continuation():
    model = tiny("llama")
    context = [5, 17, 33, 2]
    ids, greedy_tail = list(context), []
    with torch.no_grad():
        for _ in range(3):
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            greedy_tail.append(nxt)
    other = [t + 1 if t + 1 < VOCAB else 1 for t in greedy_tail]
    scorer = LoglikelihoodScorer(model, BatchingConfig())
    own, changed = scorer.score(
        [ScoreRequest("own", context, greedy_tail), ScoreRequest("x", context, other)]
    )
    assert own.greedy and not changed.greedy
    assert own.logprob > changed.logprob


class OutOfMemoryAbove:
    """The model, except that a forward pass over more than `rows` rows raises CUDA's OOM error."""

    def __init__(self, model, rows: int):
        self.model, self.rows, self.calls = model, rows, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, input_ids, **kwargs):
        self.calls.append(input_ids.shape[0])
        if input_ids.shape[0] > self.rows:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model(input_ids=input_ids, **kwargs)


def test_out_of_memory_splits_the_batch_and_keeps_every_score():
    model = tiny("llama")
    scorer = LoglikelihoodScorer(model, BatchingConfig(max_batch_size=8))
    reqs = requests(seed=1, count=8)
    expected = [unbatched(model, r)[0] for r in reqs]
    scorer.model = OutOfMemoryAbove(model, rows=2)
    results = scorer.score(reqs)
    assert [r.logprob for r in results] == pytest.approx(expected, abs=1e-4)
    assert scorer.model.calls[0] == 8 and max(scorer.model.calls[1:]) <= 4
    scorer.model = OutOfMemoryAbove(model, rows=0)  # not even one row fits: error results, no exception
    assert all(r.error and "out of memory" in r.error for r in scorer.score(reqs[:2]))


def test_engine_score_is_the_scorer_on_the_loaded_model(tiny_model):
    from runner.engine import Engine

    engine = Engine(ModelConfig(path=tiny_model, dtype="float32"), SamplingConfig())
    tok = engine.tokenizer
    reqs = [
        ScoreRequest(str(i), tok(c)["input_ids"], tok(x)["input_ids"])
        for i, (c, x) in enumerate(
            [("The quick brown fox", " jumps"), ("Hello", " world and the sea"), ("x", " y")]
        )
    ]
    for request, result in zip(reqs, engine.score(reqs), strict=True):
        assert result.logprob == pytest.approx(unbatched(engine.model, request)[0], abs=1e-4)
    engine.close()
