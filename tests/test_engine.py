"""Every batching strategy against the oracle: `model.generate` of each row alone (fp32, CPU).

Engines are real (tiny random Llama built by the session fixture), never mocked; out-of-memory is a
real `torch.OutOfMemoryError` raised by the model's forward when it is handed too many sequences.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch

from runner.config import BatchingConfig, ModelConfig, SamplingConfig
from runner.engine import Engine, Request
from runner.engine.engine import model_devices
from runner.engine.memory import token_budget
from runner.engine.sampling import Sampler, gumbel_noise, row_key, step_key
from runner.engine.strategy import choose_strategy
from tests.conftest import PROMPTS

STRATEGIES = ["padded", "continuous"]
# 1 to 744 tokens: the longest is prefilled in two chunks by continuous batching (512 tokens a step on CPU).
MIXED = [*PROMPTS, PROMPTS[5] * 8]
LIMITS = [1, 7, 20, 3, 12, 16, 5]


def make_engine(model_path: str, strategy: str, max_padding: float = 0.1, **sampling) -> Engine:
    batching = BatchingConfig(strategy=strategy, token_budget=8192, max_batch_size=8, max_padding=max_padding)
    return Engine(ModelConfig(path=model_path, dtype="float32"), SamplingConfig(**sampling), batching)


@pytest.fixture(scope="module", params=STRATEGIES)
def engine(request, tiny_model):
    built = make_engine(tiny_model, request.param, max_new_tokens=20)
    assert built.strategy == request.param
    yield built
    built.close()


@pytest.fixture(scope="module")
def oracle(tiny_model):
    """Unbatched greedy `model.generate` of one prompt, cut at EOS."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    eos = model.generation_config.eos_token_id

    def generate(prompt_ids: list[int], limit: int) -> list[int]:
        out = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=limit, do_sample=False, pad_token_id=eos
        )
        tokens = out[0, len(prompt_ids) :].tolist()
        return tokens[: tokens.index(eos)] if eos in tokens else tokens

    return generate


def requests_for(engine: Engine, prompts: list[str], limits: list[int]) -> list[Request]:
    ids = engine.tokenize(prompts)
    return [Request(f"r{i}", p, limit) for i, (p, limit) in enumerate(zip(ids, limits, strict=True))]


def test_prompts_cover_very_different_lengths(engine):
    lengths = sorted(len(ids) for ids in engine.tokenize(MIXED))
    assert lengths[0] <= 3 and lengths[-1] > 512


def test_greedy_equals_unbatched_reference(engine, oracle):
    requests = requests_for(engine, MIXED, LIMITS)
    done = engine.generate(requests)
    assert [c.id for c in done] == [r.id for r in requests]
    for request, completion in zip(requests, done, strict=True):
        expected = oracle(request.prompt_ids, request.max_new_tokens)
        assert completion.token_ids == [expected], request.id
        assert completion.texts == [engine.tokenizer.decode(expected, skip_special_tokens=True)]
        reason = "length" if len(expected) == request.max_new_tokens else "stop"
        assert completion.finish_reasons == [reason]


def test_padded_one_prefill_for_the_whole_batch_equals_the_reference(tiny_model, oracle):
    engine = make_engine(tiny_model, "padded", max_padding=1.0)
    requests = requests_for(engine, MIXED, LIMITS)
    assert [c.token_ids[0] for c in engine.generate(requests)] == [
        oracle(r.prompt_ids, r.max_new_tokens) for r in requests
    ]


def test_a_split_keeps_the_long_rows_in_front_and_saves_a_quarter_at_least():
    from runner.engine.ragged import split_point

    assert split_point([0, 500, 500, 500], 520) == (1, 500)  # 1 x 520 + 3 x 20 columns, not 4 x 520
    assert split_point([0, 0, 300, 480, 500], 520) == (3, 480)  # 3 x 520 + 2 x 40: the best candidate
    assert split_point([3, 3, 3], 10) is None  # every row starts together
    # A short row moved in front of a long one reads every column with it: 3 x 520 + 20 saves < 25%.
    assert split_point([500, 500, 0, 500], 520) is None


def test_padded_stops_reading_padding_columns_once_the_longest_rows_finish(tiny_model, oracle, monkeypatch):
    """While the 744-token prompt decodes, the other rows attend over their own columns only (the
    decode attention split in two); once it stops (5 tokens) every decode step reads the cache and the
    mask from the first column a live row uses; every row still equals the reference."""
    from runner.engine import ragged
    from runner.engine.kv_cache import SlotCache

    split_before = ragged.calls
    starts = []
    trim = SlotCache.trim
    monkeypatch.setattr(SlotCache, "trim", lambda self, start: (starts.append(start), trim(self, start))[1])
    engine = make_engine(tiny_model, "padded", max_padding=1.0)  # one batch, every row decoding together
    requests = requests_for(engine, MIXED, LIMITS)
    assert [c.token_ids[0] for c in engine.generate(requests)] == [
        oracle(r.prompt_ids, r.max_new_tokens) for r in requests
    ]
    longest = max(len(r.prompt_ids) for r in requests)
    second = sorted(len(r.prompt_ids) for r in requests)[-2]
    assert starts[0] == 0 and starts[-1] >= longest - second > 500
    assert ragged.calls > split_before
    engine.close()


def test_empty_input_gives_empty_output(engine):
    assert engine.generate([]) == []


def test_concurrent_callers_each_get_their_own_rows(engine, oracle):
    requests = requests_for(engine, MIXED * 2, LIMITS * 2)
    halves = {0: requests[::2], 1: requests[1::2]}
    results: dict[int, list] = {}
    threads = [
        threading.Thread(target=lambda k=k: results.update({k: engine.generate(halves[k])})) for k in halves
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for k, part in halves.items():
        assert [c.token_ids[0] for c in results[k]] == [oracle(r.prompt_ids, r.max_new_tokens) for r in part]


def test_padded_merges_rows_of_concurrent_callers_into_shared_batches(tiny_model, oracle):
    """Two Ray Data batches in flight on one replica: the second caller's rows join the first's batches."""
    batching = BatchingConfig(strategy="padded", token_budget=8192, max_batch_size=4)
    engine = Engine(ModelConfig(path=tiny_model, dtype="float32"), SamplingConfig(), batching)
    generator, ran = engine.generator, []
    first_caller = requests_for(engine, PROMPTS, [5] * len(PROMPTS))
    second_caller = [dataclasses.replace(r, id=f"b{r.id}") for r in first_caller]
    run = generator.run

    def recording_run(batch):
        if not ran:  # hold the first batch until the second caller has queued its rows
            deadline = time.monotonic() + 60
            while len(generator._calls) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        ran.append([r.id for r in batch])
        return run(batch)

    generator.run = recording_run
    results: dict[str, list] = {}
    first = threading.Thread(target=lambda: results.update(a=engine.generate(first_caller)))
    first.start()
    results["b"] = engine.generate(second_caller)
    first.join(timeout=120)
    # Alone, each caller's 6 rows take 2 batches of at most 4 (4 in all); merged, the 8 rows left after
    # the first batch fill 2 batches, and rows of both callers share one.
    assert len(ran) == 3 and [len(b) for b in ran] == [4, 4, 4]
    assert any({i[0] for i in b} == {"r", "b"} for b in ran[1:])
    for key, requests in (("a", first_caller), ("b", second_caller)):
        assert [c.id for c in results[key]] == [r.id for r in requests]
        assert [c.token_ids[0] for c in results[key]] == [oracle(r.prompt_ids, 5) for r in requests]


def test_padded_first_batch_waits_for_announced_callers_still_preparing(tiny_model):
    """A replica's in-flight batches arrive a tokenization apart: the first batch is planned over all."""
    batching = BatchingConfig(strategy="padded", token_budget=8192, max_batch_size=4)
    engine = Engine(ModelConfig(path=tiny_model, dtype="float32"), SamplingConfig(), batching)
    first_caller = requests_for(engine, PROMPTS, [2] * len(PROMPTS))
    second_caller = [dataclasses.replace(r, id=f"b{r.id}") for r in first_caller]
    run, ran = engine.generator.run, []
    engine.generator.run = lambda batch: ran.append([r.id for r in batch]) or run(batch)
    preparing = threading.Event()

    def slow_second_caller():
        with engine.announce():
            preparing.set()
            time.sleep(0.3)  # still tokenizing when the first caller submits
            engine.generate(second_caller)

    second = threading.Thread(target=slow_second_caller)
    second.start()
    preparing.wait(timeout=30)
    with engine.announce():
        engine.generate(first_caller)
    second.join(timeout=120)
    assert {i[0] for i in ran[0]} == {"r", "b"}, ran  # the 4 longest of both callers' rows
    assert len(ran) == 3


def test_padded_a_failing_batch_fails_its_call_and_the_engine_goes_on(tiny_model, oracle):
    engine = make_engine(tiny_model, "padded")
    requests = requests_for(engine, PROMPTS[:2], [3, 3])
    run = engine.generator.run

    def poisoned(batch):
        if any(r.id == "r1" for r in batch):
            raise RuntimeError("kernel failed")
        return run(batch)

    engine.generator.run = poisoned
    with pytest.raises(RuntimeError, match="kernel failed"):
        engine.generate(requests)
    assert [c.token_ids[0] for c in engine.generate(requests[:1])] == [oracle(requests[0].prompt_ids, 3)]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_greedy_n_samples_all_equal_the_reference(tiny_model, oracle, strategy):
    engine = make_engine(tiny_model, strategy, n=3)
    try:
        requests = requests_for(engine, PROMPTS[:3], [9, 9, 9])
        for request, completion in zip(requests, engine.generate(requests), strict=True):
            assert completion.token_ids == [oracle(request.prompt_ids, 9)] * 3
    finally:
        engine.close()


def _through_stop(tokenizer, tokens: list[int], stop: str) -> tuple[list[int], str]:
    """The reference cut: shortest token prefix whose text holds the stop; text before the stop."""
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    for k in range(1, len(tokens) + 1):
        if stop in tokenizer.decode(tokens[:k], skip_special_tokens=True):
            return tokens[:k], text[: text.index(stop)]
    raise AssertionError("stop string not in the reference output")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_stop_strings_cut_each_row_where_its_own_text_stops(tiny_model, oracle, strategy):
    probe = make_engine(tiny_model, "padded")
    ids = probe.tokenize(PROMPTS)
    refs = [oracle(p, 24) for p in ids]
    texts = [probe.tokenizer.decode(r, skip_special_tokens=True) for r in refs]
    probe.close()
    long_text = max(texts, key=len)
    stop = long_text[len(long_text) // 2 : len(long_text) // 2 + 2]
    engine = make_engine(tiny_model, strategy, stop=[stop], max_new_tokens=24)
    try:
        done = engine.generate([Request(f"r{i}", p, 24) for i, p in enumerate(ids)])
        for ref, text, completion in zip(refs, texts, done, strict=True):
            if stop in text:
                tokens, cut = _through_stop(engine.tokenizer, ref, stop)
                assert (completion.token_ids[0], completion.texts[0]) == (tokens, cut)
                assert completion.finish_reasons == ["stop"]
            else:
                assert completion.token_ids[0] == ref
        assert sum(stop in t for t in texts) >= 1
    finally:
        engine.close()


SAMPLED = {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "n": 2, "max_new_tokens": 12}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sampling_is_reproducible_whatever_the_batch(tiny_model, strategy):
    engine = make_engine(tiny_model, strategy, seed=7, **SAMPLED)
    try:
        requests = requests_for(engine, PROMPTS, [12] * len(PROMPTS))
        first = [c.token_ids for c in engine.generate(requests)]
        again = [c.token_ids for c in engine.generate(requests)]
        alone = [engine.generate([r])[0].token_ids for r in reversed(requests)][::-1]
        assert first == again == alone
        assert any(samples[0] != samples[1] for samples in first)  # n samples differ from each other
    finally:
        engine.close()
    other = make_engine(tiny_model, strategy, seed=8, **SAMPLED)
    try:
        assert [c.token_ids for c in other.generate(requests)] != first
    finally:
        other.close()


def test_temperature_sampling_is_the_same_draw_in_both_strategies(tiny_model):
    outputs = []
    for strategy in STRATEGIES:
        engine = make_engine(tiny_model, strategy, temperature=0.7, seed=3, max_new_tokens=10)
        requests = requests_for(engine, PROMPTS, [10] * len(PROMPTS))
        outputs.append([c.token_ids for c in engine.generate(requests)])
        engine.close()
    assert outputs[0] == outputs[1]


def test_keyed_gumbel_draws_follow_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]]).repeat(4000, 1)
    keys = [step_key(row_key(0, f"q{i}", 0), 5) for i in range(4000)]
    drawn = Sampler(SamplingConfig(temperature=1.0)).choose(logits, keys)
    freq = torch.bincount(drawn, minlength=5).float() / 4000
    assert torch.allclose(freq, logits[0].softmax(-1), atol=0.03)
    assert freq[4] == 0


def test_gumbel_noise_depends_only_on_the_key():
    keys = torch.tensor([5, 6, 5])
    noise = gumbel_noise(keys, 7)
    assert torch.equal(noise[0], noise[2]) and not torch.equal(noise[0], noise[1])
    assert torch.equal(gumbel_noise(torch.tensor([6]), 7)[0], noise[1])


def _limit_rows(model, max_rows: int) -> list[int]:
    """Make the model's forward raise a real CUDA-style OOM when it computes more than max_rows sequences.

    Returns the list of refused row counts, so a test can check the failure really happened."""
    forward, refused = model.forward, []

    def guarded(*args, **kwargs):
        cu = kwargs.get("cu_seq_lens_q")  # continuous batching packs sequences into one row
        rows = cu.numel() - 1 if cu is not None else kwargs["input_ids"].shape[0]
        if rows > max_rows:
            refused.append(rows)
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: {rows} rows > {max_rows})")
        return forward(*args, **kwargs)

    model.forward = guarded
    return refused


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_out_of_memory_splits_the_batch_and_retries(tiny_model, oracle, strategy):
    engine = make_engine(tiny_model, strategy)
    try:
        refused = _limit_rows(engine.model, max_rows=2)
        requests = requests_for(engine, PROMPTS, [6] * len(PROMPTS))
        done = engine.generate(requests)
        assert refused and max(refused) > 2
        assert [c.token_ids[0] for c in done] == [oracle(r.prompt_ids, 6) for r in requests]
        assert all(c.error is None for c in done)
    finally:
        engine.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_row_that_never_fits_becomes_an_error_row(tiny_model, strategy):
    engine = make_engine(tiny_model, strategy)
    try:
        refused = _limit_rows(engine.model, max_rows=0)
        requests = requests_for(engine, PROMPTS[:3], [4, 4, 4])
        done = engine.generate(requests)
        assert 1 in refused
        assert [c.id for c in done] == [r.id for r in requests]
        assert all(c.finish_reasons == ["error"] and "out of memory" in c.error for c in done)
    finally:
        engine.close()


def test_auto_is_continuous_on_one_gpu_and_padded_on_cpu_or_split(engine):
    assert model_devices(engine.model) == {"cpu"}
    assert choose_strategy("auto", {"cuda:0"})[0] == "continuous"
    assert choose_strategy("auto", {"cpu"})[0] == "padded"
    assert choose_strategy("auto", {"cuda:0", "cuda:1"})[0] == "padded"
    assert choose_strategy("continuous", {"cpu"})[0] == "continuous"
    with pytest.raises(ValueError, match="known: auto, padded, continuous"):
        choose_strategy("ragged", {"cpu"})


def test_token_budget_comes_from_config_else_the_device(engine):
    assert token_budget(BatchingConfig(token_budget=1234), engine.model) == 1234
    assert token_budget(BatchingConfig(), engine.model) >= 2048


def test_paged_attention_matches_per_sequence_causal_attention():
    """Packed sequences: a prefill, a decode step and a prefill chunk with cached keys before it."""
    from runner.engine.paged_attention import _sequence_loop

    torch.manual_seed(0)
    shapes = [(5, 5), (1, 9), (3, 10)]  # (new query tokens, keys incl. cache) per sequence
    cu_q = torch.tensor([0, 5, 6, 9])
    cu_k = torch.tensor([0, 5, 14, 24])
    query, key, value = torch.randn(1, 4, 9, 8), torch.randn(1, 2, 24, 8), torch.randn(1, 2, 24, 8)
    out = _sequence_loop(query, key, value, {"cu_seq_lens_q": cu_q, "cu_seq_lens_k": cu_k}, None)
    for i, (q_len, k_len) in enumerate(shapes):
        q = query[0, :, cu_q[i] : cu_q[i + 1]]
        k = key[0, :, cu_k[i] : cu_k[i + 1]].repeat_interleave(2, dim=0)
        v = value[0, :, cu_k[i] : cu_k[i + 1]].repeat_interleave(2, dim=0)
        visible = torch.arange(k_len)[None, :] <= torch.arange(q_len)[:, None] + (k_len - q_len)
        scores = (q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~visible, float("-inf"))
        expected = (scores.softmax(-1) @ v).transpose(0, 1)
        assert torch.allclose(out[0, cu_q[i] : cu_q[i + 1]], expected, atol=1e-5), (q_len, k_len)
