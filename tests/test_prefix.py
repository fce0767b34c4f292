"""Shared prompt prefixes computed once (runner/engine/prefix.py): for the padded strategy and for
`Engine.score`, against each row's unbatched reference (greedy `model.generate`, one forward pass),
on every architecture of the matrix the padded strategy runs, with the prefix longer than the sliding
windows; and the count of reused tokens in `_job.json`.
"""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from runner import compat
from runner.config import BatchingConfig, ModelConfig, SamplingConfig
from runner.engine import Engine, Request, cascade
from runner.engine.architecture import Architecture
from runner.engine.forward import ModelCall
from runner.engine.prefix import PrefixStore, common_length, share_groups
from runner.engine.scoring import LoglikelihoodScorer, ScoreRequest
from runner.errors import ConfigError
from runner.io.summary import PREFIX_REUSED_KEY, JobStats, build_summary
from tests import arch_models
from tests.conftest import write_jsonl
from tests.test_eval_engine import VOCAB, tiny, unbatched

SYSTEM = "You are a careful assistant. Answer the question in one short line, then stop. " * 3
QUESTIONS = ["Hello", "x", "What is the capital of France?", "東京 서울 🚀 naïve café", "List five primes."]


reference = arch_models.generate_one  # (model, prompt ids, limit): unbatched greedy generate of one row


def padded_engine(path, **batching) -> Engine:
    batching = {"strategy": "padded", "token_budget": 8192, "max_batch_size": 8, **batching}
    return Engine(ModelConfig(path=str(path), dtype="float32"), SamplingConfig(), BatchingConfig(**batching))


# -- finding the groups ---------------------------------------------------------------------------


def test_common_length_counts_leading_equal_tokens():
    assert common_length([1, 2, 3, 4], [1, 2, 9]) == 2
    assert common_length([1, 2], [1, 2, 3]) == 2
    assert common_length([5], [6]) == 0
    assert common_length(list(range(1000)), [*range(777), -1]) == 777


def test_groups_keep_a_long_prefix_of_some_rows_apart_from_a_short_one_of_all():
    head = list(range(100, 180))  # 80 tokens every row has
    long_a, long_b = [*head, *range(500, 700)], [*head, *range(800, 1000)]
    prompts = [long_a + [1], long_a + [2, 3], long_b + [4], long_b + [5], long_a + [6]]
    groups = {tuple(g.rows): g.shared for g in share_groups(prompts, min_tokens=64)}
    assert groups == {(0, 1, 4): len(long_a), (2, 3): len(long_b)}


def test_groups_need_the_minimum_and_leave_every_row_a_token_of_its_own():
    base = list(range(10, 90))  # 80 tokens
    groups = share_groups([base, [*base, 7], [*base[:40], 1, 2], [3]], min_tokens=64)
    assert [(g.rows, g.shared) for g in groups] == [([2, 3], 0), ([0, 1], 79)]
    assert [(g.rows, g.shared) for g in share_groups([base, [*base, 7]], min_tokens=80)] == [([0, 1], 0)]


def test_the_store_reuses_the_longest_start_it_keeps_and_drops_the_oldest(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    store, forward = PrefixStore(model, capacity=150), ModelCall(model).last
    first = list(range(5, 105))
    with torch.inference_mode():
        whole = store.get(first, None, forward)
        assert store.computed == 100 and whole[0][0].shape[2] == 100
        part = store.get(first[:60], None, forward)  # the first 60 columns of the kept entry
        assert store.computed == 100 and torch.equal(part[0][0], whole[0][0][:, :, :60])
        longer = store.get([*first, 7, 8], None, forward)  # computes 2 tokens, replaces the entry
        assert store.computed == 102 and torch.allclose(longer[0][0][:, :, :100], whole[0][0], atol=1e-6)
        store.get(list(range(300, 380)), None, forward)  # 102 + 80 > 150: the older entry goes
        store.get(first, None, forward)
        assert store.computed == 102 + 80 + 100
        store.get(first, "adapter-a", forward)  # another adapter's keys differ: computed again
        assert store.computed == 102 + 80 + 200


@pytest.mark.parametrize("arch", ["llama", "mistral-sliding", "gpt2"])
def test_a_shared_prefill_gives_every_row_its_own_logits_and_cache(arch):
    """Stronger than greedy tokens: each row's last logits and its real cache columns are the ones
    the row computes alone, whatever its length against the shared prefix and the others."""
    from runner.engine.kv_cache import full_cache
    from runner.engine.prefix import SharedPrefill

    model = tiny(arch)
    rng = random.Random(3)
    head = [rng.randrange(1, VOCAB) for _ in range(70)]
    prompts = [head + [rng.randrange(1, VOCAB) for _ in range(n)] for n in (1, 2, 9, 20, 20, 3)] + [head]
    prefill = SharedPrefill(model, 0, 0.1, 64, PrefixStore(model, 4096))
    width = max(map(len, prompts)) + 2
    with torch.inference_mode():
        logits, layers = prefill(prompts, width, None, ModelCall(model).last)
        for row, prompt in enumerate(prompts):
            alone = full_cache(model.config)
            out = model(input_ids=torch.tensor([prompt]), past_key_values=alone, use_cache=True).logits[0, -1]
            assert torch.allclose(logits[row], out, atol=1e-5), row
            for (keys, values), layer in zip(layers, alone.layers, strict=True):
                assert torch.allclose(keys[row, :, width - len(prompt) :], layer.keys[0], atol=1e-5), row
                assert torch.allclose(values[row, :, width - len(prompt) :], layer.values[0], atol=1e-5), row
    assert prefill.store.computed == 69 and prefill.tokens_saved > 5 * 60


# -- generation -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()


def equal_length_rows(engine: Engine, length: int) -> tuple[list[int], list[list[int]]]:
    """The system prompt's ids and one row per question: system + question, cut to `length` tokens;
    questions differ from their first token on."""
    system = engine.tokenize([SYSTEM])[0]
    tails = [
        engine.tokenizer(f"{q} and more words", add_special_tokens=False)["input_ids"] for q in QUESTIONS[:4]
    ]
    assert len({t[0] for t in tails}) == len(tails)
    return system, [(system + t)[:length] for t in tails]


def test_rows_sharing_a_system_prompt_equal_the_reference_and_compute_it_once(tiny_model, tiny_llama):
    engine = padded_engine(tiny_model, max_batch_size=2)  # 4 rows: two batches, one prefix computation
    system, rows = equal_length_rows(engine, len(engine.tokenize([SYSTEM])[0]) + 6)
    assert len(system) > 64
    done = engine.generate([Request(f"r{i}", p, 8 + i) for i, p in enumerate(rows)])
    assert [c.token_ids for c in done] == [[reference(tiny_llama, p, 8 + i)] for i, p in enumerate(rows)]
    assert engine.generator.layout.prefill.store.computed == len(system)
    assert engine.generator.prefix_tokens_reused == 3 * len(system)  # 4 rows took it, 1 computed it
    engine.close()


def test_rows_of_every_length_around_a_shared_prefix_equal_the_reference(tiny_model, tiny_llama):
    engine = padded_engine(tiny_model)
    ids = engine.tokenize([SYSTEM + q for q in QUESTIONS] + [SYSTEM, SYSTEM + QUESTIONS[2], "unrelated"])
    limits = [5, 9, 3, 12, 7, 6, 4, 8]
    done = engine.generate([Request(f"r{i}", p, n) for i, (p, n) in enumerate(zip(ids, limits, strict=True))])
    expected = [[reference(tiny_llama, p, n)] for p, n in zip(ids, limits, strict=True)]
    assert [c.token_ids for c in done] == expected
    assert engine.generator.prefix_tokens_reused > 5 * 64
    engine.close()


@pytest.mark.parametrize("groups", [[0, 1, -1, 0, 1], [-1, 0, -1, -1, -1]], ids=["most-share", "few-share"])
@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_cascade_attention_equals_sdpa_over_the_prefix_and_own_keys_joined(mask_kind, groups):
    """The two-part softmax against SDPA over each row's [prefix; own] keys: grouped-query heads, rows
    of two prefixes and rows sharing none (a few: picked out; most: every row through the model's own
    SDPA, the sharing rows replaced), left padding in the own part, several query positions (no mask:
    a prefill whose queries are the whole own part, as transformers leaves the mask out only then)."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    rows, heads, kv_heads, own_len, dim = 5, 8, 2, 7, 16
    q_len = own_len if mask_kind == "none" else 3
    query = torch.randn(rows, heads, q_len, dim, generator=gen)
    key, value = (torch.randn(rows, kv_heads, own_len, dim, generator=gen) for _ in range(2))
    prefixes = [[tuple(torch.randn(1, kv_heads, n, dim, generator=gen) for _ in range(2))] for n in (11, 4)]
    pads = [0, 2, 1, 3, 0]  # left padding of each row's own part
    seen = torch.ones(rows, 1, q_len, own_len, dtype=torch.bool).tril(own_len - q_len)
    for r, pad in enumerate(pads):
        seen[r, :, :, :pad] = False
    if mask_kind == "none":
        seen[:] = torch.ones(q_len, own_len, dtype=torch.bool).tril(own_len - q_len)
        mask = None
    elif mask_kind == "bool":
        mask = seen
    else:
        mask = torch.zeros(seen.shape).masked_fill(~seen, torch.finfo(torch.float32).min)
    module = torch.nn.Module()
    module.layer_idx, module.num_key_value_groups = 0, heads // kv_heads  # as transformers' layers
    out, _ = cascade._cascade(cascade.Shared(prefixes, groups), module, query, key, value, mask, None, {})
    for r in range(rows):
        keys, values, visible = key[r : r + 1], value[r : r + 1], seen[r : r + 1]
        if groups[r] >= 0:
            k, v = prefixes[groups[r]][0]
            keys, values = torch.cat([k, keys], 2), torch.cat([v, values], 2)
            visible = torch.cat([torch.ones(1, 1, q_len, k.shape[2], dtype=torch.bool), visible], -1)
        expected = F.scaled_dot_product_attention(
            query[r : r + 1], keys, values, attn_mask=visible, enable_gqa=True
        )
        assert torch.allclose(out[r], expected[0].transpose(0, 1), atol=1e-5), r


@pytest.mark.parametrize("sliced", [False, True], ids=["whole", "row-by-row"])
def test_cascade_rows_of_two_prefixes_and_none_keep_only_their_own_tokens_and_equal_the_reference(
    tiny_model, tiny_llama, monkeypatch, sliced
):
    """One decode batch holding rows of two different system prompts and rows sharing nothing, rows
    finishing at different steps (so rows move between cache slots): every row equals its unbatched
    reference, and a shared row's cache holds its suffix, not the prefix (read from one copy)."""
    from runner.engine.kv_cache import SlotCache

    if sliced:  # the scores' memory bound cuts every group into one-row slices
        monkeypatch.setattr(cascade, "SCORES_BYTES", 1)
    widths = []
    fill = SlotCache.fill
    monkeypatch.setattr(
        SlotCache, "fill", lambda self, parts, width: (widths.append(width), fill(self, parts, width))[1]
    )
    engine = padded_engine(tiny_model, max_batch_size=16)
    other = "Reply in French, with one word, and never more than that. " * 4
    texts = [SYSTEM + q for q in QUESTIONS] + [other + q for q in QUESTIONS[:3]] + ["unrelated", "x y z"]
    ids = engine.tokenize(texts)
    first, second = ids[:5], ids[5:8]
    s1 = min(common_length(first[0], p) for p in first[1:])
    s2 = min(common_length(second[0], p) for p in second[1:])
    own = [len(p) - s1 for p in first] + [len(p) - s2 for p in second] + [len(ids[8]), len(ids[9])]
    limits = [3, 12, 5, 9, 1, 7, 2, 10, 4, 6]
    before = cascade.calls
    done = engine.generate([Request(f"r{i}", p, n) for i, (p, n) in enumerate(zip(ids, limits, strict=True))])
    assert [c.token_ids for c in done] == [
        [reference(tiny_llama, p, n)] for p, n in zip(ids, limits, strict=True)
    ]
    assert engine.generator.layout.copying is None and cascade.calls > before
    assert s1 > 64 and s2 > 64 and widths[-1] == max(own)  # after the probe: own tokens
    engine.close()


def test_cascade_rows_sharing_nothing_split_by_length_equal_the_reference(tiny_model, tiny_llama):
    """Two rows share a system prompt, six share nothing and one of those is far longer than the
    rest: the six attend through the model's own SDPA, split so the short ones skip the long one's
    columns (runner.engine.ragged), and every row equals its unbatched reference."""
    from runner.engine import ragged

    engine = padded_engine(tiny_model, max_padding=1.0)
    long = " ".join(f"w{i}" for i in range(300))
    texts = [SYSTEM + q for q in QUESTIONS[:2]] + [long, "unrelated", "x y z", "Hello there", "a", "b c"]
    ids = engine.tokenize(texts)
    limits = [6, 9, 12, 4, 8, 10, 3, 7]
    before = (cascade.calls, ragged.calls)
    done = engine.generate([Request(f"r{i}", p, n) for i, (p, n) in enumerate(zip(ids, limits, strict=True))])
    assert [c.token_ids for c in done] == [
        [reference(tiny_llama, p, n)] for p, n in zip(ids, limits, strict=True)
    ]
    assert cascade.calls > before[0] and ragged.calls > before[1]
    engine.close()


def test_a_model_whose_layers_skip_the_attention_function_copies_the_prefix_instead(
    tiny_model, tiny_llama, caplog
):
    """A model whose layers do not call transformers' SDPA function would read no prefix at all on the
    cascade path: the first forward finds it (the layer count), and the batch runs on the copy path."""
    from transformers import AttentionInterface

    engine = padded_engine(tiny_model)
    ids = engine.tokenize([SYSTEM + q for q in QUESTIONS[:3]])
    cascade.install()
    wrapper = AttentionInterface()["sdpa"]
    plain = compat.attention_originals()["sdpa"]
    AttentionInterface.register("sdpa", plain)  # the layers now bypass the cascade
    try:
        with caplog.at_level("WARNING"):
            done = engine.generate([Request(str(i), p, 5) for i, p in enumerate(ids)])
    finally:
        AttentionInterface.register("sdpa", wrapper)
    assert "cascade attention does not run on LlamaForCausalLM (0 of 2 layers called" in caplog.text
    assert [c.token_ids for c in done] == [[reference(tiny_llama, p, 5)] for p in ids]
    assert engine.generator.layout.copying is not None and engine.generator.prefix_tokens_reused > 0
    engine.close()


@pytest.mark.parametrize("first", ["cascade", "paged"])
def test_cascade_and_paged_attention_wrappers_keep_each_other_in_either_install_order(
    tiny_model, tiny_llama, monkeypatch, first
):
    """Both wrap transformers' "sdpa" attention function (padded's cascade, continuous' per-sequence
    attention): whichever a process installs first, a padded engine still reads prefixes by cascade."""
    from transformers import AttentionInterface

    from runner.engine import paged_attention

    registered = {name: AttentionInterface()[name] for name in compat.attention_originals()}
    for name, original in compat.attention_originals().items():
        AttentionInterface.register(name, original)
    monkeypatch.setattr(cascade, "_installed", False)
    monkeypatch.setattr(paged_attention, "_installed", False)
    try:
        for install in sorted(
            [cascade.install, paged_attention.install], key=lambda f: first not in f.__module__
        ):
            install()
        engine = padded_engine(tiny_model)
        ids = engine.tokenize([SYSTEM + q for q in QUESTIONS[:3]])
        before = cascade.calls
        done = engine.generate([Request(str(i), p, 4) for i, p in enumerate(ids)])
        assert engine.generator.layout.copying is None and cascade.calls > before
        assert [c.token_ids for c in done] == [[reference(tiny_llama, p, 4)] for p in ids]
        engine.close()
    finally:
        for name, function in registered.items():
            AttentionInterface.register(name, function)


def test_sharing_off_computes_every_prompt_and_gives_the_same_tokens(tiny_model):
    prompts = [SYSTEM + q for q in QUESTIONS]
    tokens = []
    for sharing in (True, False):
        engine = padded_engine(tiny_model, prefix_sharing=sharing)
        ids = engine.tokenize(prompts)
        tokens.append(
            [c.token_ids for c in engine.generate([Request(str(i), p, 6) for i, p in enumerate(ids)])]
        )
        assert (engine.generator.prefix_tokens_reused > 0) == sharing
        engine.close()
    assert tokens[0] == tokens[1]


def test_a_shared_prefill_that_fails_turns_sharing_off_logged_and_rows_still_complete(
    tiny_model, tiny_llama, monkeypatch, caplog
):
    from runner.engine.prefix import SharedPrefill

    def broken(self, *args):
        raise RuntimeError("this model rejects a prefill over a cache")

    engine = padded_engine(tiny_model)
    monkeypatch.setattr(SharedPrefill, "fill_parts", broken)
    ids = engine.tokenize([SYSTEM + q for q in QUESTIONS[:3]])
    with caplog.at_level("WARNING"):
        done = engine.generate([Request(str(i), p, 5) for i, p in enumerate(ids)])
    assert "prefix sharing fails on LlamaForCausalLM (RuntimeError: this model rejects" in caplog.text
    assert [c.token_ids for c in done] == [[reference(tiny_llama, p, 5)] for p in ids]
    assert engine.generator.prefix_tokens_reused == 0
    engine.close()


PADDED_SPECS = [s for s in arch_models.SPECS if "padded" not in s.refuses]


@pytest.fixture(scope="module")
def arch_root(tmp_path_factory):
    return tmp_path_factory.mktemp("prefix-architectures")


@pytest.mark.parametrize("spec", arch_models.params(PADDED_SPECS))
def test_every_padded_architecture_shares_a_prefix_longer_than_its_window_exactly(spec, arch_root):
    from transformers import AutoModelForCausalLM

    path = arch_models.build(spec, arch_root)
    engine = padded_engine(path)
    ids = engine.tokenize([SYSTEM + q for q in QUESTIONS] + [SYSTEM])
    shared = min(common_length(ids[0], p) for p in ids[1:])
    assert shared > 64 and shared > 4 * arch_models.WINDOW
    limits = [4, 7, 3, 6, 5, 2]
    calls_before = cascade.calls
    done = engine.generate([Request(f"r{i}", p, n) for i, (p, n) in enumerate(zip(ids, limits, strict=True))])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    expected = [[reference(model, p, n)] for p, n in zip(ids, limits, strict=True)]
    bad = [i for i, (c, e) in enumerate(zip(done, expected, strict=True)) if c.token_ids != e or c.error]
    assert bad == [], f"{spec.name}: rows {bad} differ from the unbatched reference"
    loop = engine.generator.layout
    assert loop.broken is None
    assert engine.generator.prefix_tokens_reused > 4 * (shared - 40)
    # Each architecture either read the prefix from one copy (cascade attention) or says why it
    # copied it: known from its config, or found at its first forward (layers that compute their
    # attention without transformers' attention functions, as Falcon's).
    if loop.copying is None:
        assert cascade.calls > calls_before
    else:
        assert (
            loop.copying == cascade.unsupported(model, Architecture.of(model))
            or "layers called" in loop.copying
        )
    engine.close()


CONTINUOUS_SPECS = [s for s in arch_models.SPECS if "continuous" not in s.refuses]


@pytest.mark.parametrize("spec", arch_models.params(CONTINUOUS_SPECS))
def test_continuous_shares_cached_blocks_exactly_or_says_it_cannot(spec, arch_root, caplog):
    """transformers' block sharing: a row whose prompt starts with the cached pages of an earlier one
    (here: the system prompt alone, run first) reuses them; a sliding-window model runs unshared."""
    from transformers import AutoModelForCausalLM

    path = arch_models.build(spec, arch_root)
    with caplog.at_level("INFO"):
        try:
            engine = padded_engine(path, strategy="continuous")
        except ConfigError as err:  # continuous itself fails this model's start-up probe: not sharing's
            pytest.skip(str(err))
    ids = engine.tokenize([SYSTEM, *(SYSTEM + q for q in QUESTIONS)])
    limits = [3, 4, 7, 3, 6, 5]
    first = engine.generate([Request("r0", ids[0], limits[0])])
    done = first + engine.generate(
        [Request(f"r{i}", p, n) for i, (p, n) in enumerate(zip(ids, limits, strict=True)) if i]
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    expected = [[reference(model, p, n)] for p, n in zip(ids, limits, strict=True)]
    bad = [i for i, (c, e) in enumerate(zip(done, expected, strict=True)) if c.token_ids != e or c.error]
    assert bad == [], f"{spec.name}: rows {bad} differ from the unbatched reference"
    if "sliding_attention" in engine.architecture.layer_types:
        assert engine.generator.prefix_tokens_reused == 0
        assert "continuous: no prefix sharing for" in caplog.text
    else:  # every later row took at least the system prompt's first 64-token page
        assert engine.generator.prefix_tokens_reused >= 64 * len(QUESTIONS)
    engine.close()


def test_continuous_without_sharing_reuses_nothing(tiny_model):
    engine = padded_engine(tiny_model, strategy="continuous", prefix_sharing=False)
    ids = engine.tokenize([SYSTEM, SYSTEM + QUESTIONS[0]])
    engine.generate([Request("a", ids[0], 2)])
    engine.generate([Request("b", ids[1], 2)])
    assert engine.generator.prefix_tokens_reused == 0
    engine.close()


# -- scoring --------------------------------------------------------------------------------------


def few_shot_questions(seed: int = 0, questions: int = 5) -> list[ScoreRequest]:
    """Four choices per question; every context begins with one 70-token few-shot block."""
    rng = random.Random(seed)
    few_shot = [rng.randrange(1, VOCAB) for _ in range(70)]
    out = []
    for q in range(questions):
        context = few_shot + [rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 12))]
        for k in range(4):
            choice = [rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 6))]
            out.append(ScoreRequest(f"q{q}#{k}", context, choice))
    return [*out, ScoreRequest("alone", [5, 6, 7], [8, 9])]


@pytest.mark.parametrize("arch", ["llama", "mistral-sliding", "gpt2", "bloom-alibi"])
def test_choices_scored_over_one_context_equal_unbatched_scores(arch):
    model = tiny(arch)
    # max_padding 1: contexts of different lengths are prefilled together, their shared columns shifted.
    batching = BatchingConfig(token_budget=1024, max_batch_size=8, max_padding=1.0)
    scorer = LoglikelihoodScorer(model, batching)
    reqs = few_shot_questions()
    results = scorer.score(reqs)
    assert [r.id for r in results] == [r.id for r in reqs]
    for request, result in zip(reqs, results, strict=True):
        logprob, greedy = unbatched(model, request)
        assert result.error is None
        assert result.logprob == pytest.approx(logprob, abs=1e-5), request.id
        assert result.greedy == greedy
    contexts = {tuple(r.context_ids) for r in reqs if r.id != "alone"}
    saved_by_choices = sum(3 * len(c) for c in contexts)  # 3 of each question's 4 choices reuse it
    if arch == "bloom-alibi":  # not exact under padding: every request keeps its own forward pass
        assert scorer.sharing is None and scorer.prefix_tokens_reused == 0
    else:  # and the few-shot block is computed once for all the questions
        assert scorer.prefix_tokens_reused > saved_by_choices + 3 * 60


def test_one_token_choices_need_no_second_pass():
    model = tiny("llama")
    reqs = [ScoreRequest(f"c{k}", list(range(1, 40)), [k + 50]) for k in range(4)]
    calls = []
    model.register_forward_pre_hook(
        lambda _m, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    results = LoglikelihoodScorer(model, BatchingConfig()).score(reqs)
    assert calls == [torch.Size([1, 39])]  # the context, once
    for request, result in zip(reqs, results, strict=True):
        assert result.logprob == pytest.approx(unbatched(model, request)[0], abs=1e-5)


# -- the count in _job.json -----------------------------------------------------------------------


def output_batch(replica: str, reused: int) -> pa.Table:
    table = pa.table(
        {"error": pa.array([None], pa.string()), "prompt_tokens": [10], "completion_tokens": [2]}
    )
    table = table.append_column("replica", pa.array([replica]))
    return table.replace_schema_metadata({PREFIX_REUSED_KEY: str(reused)})


def test_the_summary_adds_each_replicas_latest_running_count():
    stats = JobStats()
    for replica, reused in [("a", 100), ("b", 40), ("a", 300), ("a", 250), ("b", 90)]:
        stats.add(output_batch(replica, reused))
    stats.add(output_batch("c", 0).replace_schema_metadata(None))  # a stage that reports none
    assert stats.prefix_tokens_reused == 300 + 90
    assert build_summary(_config("x", "y"), stats)["prefix_tokens_reused"] == 390


def _config(source, out):
    from runner.config import build_config

    return build_config(
        {
            "model": {"path": "demo:tiny-llama", "dtype": "float32"},
            "data": {"source": str(source), "id_column": "id"},
            "sampling": {"max_new_tokens": 4},
            "batching": {"strategy": "padded", "rows_per_task": 4},
            "output": {"path": str(out)},
        }
    )


@pytest.mark.slow
def test_a_job_reports_the_prompt_tokens_it_reused_in_its_summary(ray_cpu, tmp_path):
    from jobs.generate.job import run

    rows = [{"id": f"r{i}", "prompt": SYSTEM + q} for i, q in enumerate(QUESTIONS * 2)]
    cfg = _config(write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out")
    summary = run(cfg)
    written = json.loads((tmp_path / "out" / "_job.json").read_text())
    assert written["prefix_tokens_reused"] == summary["prefix_tokens_reused"]
    assert 64 * (len(rows) - 2) < summary["prefix_tokens_reused"] < summary["prompt_tokens"]
    assert summary["rows_ok"] == len(rows)
    for part in (tmp_path / "out").glob("*.parquet"):  # the count goes to the driver, not into parts
        assert b"runner.prefix_tokens_reused" not in (pq.read_schema(part).metadata or {})
