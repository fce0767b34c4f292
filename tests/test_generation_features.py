"""Dataset-generation options: structured output, logprobs, chat prompts, sampling options, LoRA adapters.

Oracles: a plain forward pass / `model.generate` of the same model with transformers' own logits
processors, `apply_chat_template`, jsonschema validation, and `generate` of the merged adapter model.
Every engine option is run in both batching strategies; engines are real (the tiny demo Llama).
"""

from __future__ import annotations

import json
import re

import jsonschema
import pyarrow as pa
import pytest
import torch

from jobs.generate.prompts import PromptBuilder
from jobs.generate.stage import GenerationStage
from runner import compat
from runner.config import BatchingConfig, ModelConfig, SamplingConfig, build_config
from runner.engine import Engine, Request
from runner.engine.sampling import gumbel_noise, row_key, step_key
from runner.engine.types import RowSampling
from runner.errors import ConfigError
from tests.conftest import PROMPTS

pytestmark = pytest.mark.slow  # every generation option against its reference, per strategy

STRATEGIES = ["padded", "continuous"]


def make_engine(model_path: str, strategy: str, model: dict | None = None, **sampling) -> Engine:
    batching = BatchingConfig(strategy=strategy, token_budget=4096, max_batch_size=8)
    return Engine(
        ModelConfig(path=model_path, dtype="float32", **(model or {})), SamplingConfig(**sampling), batching
    )


def generate(engine: Engine, prompts: list[str], limit: int, **fields) -> tuple[list[Request], list]:
    ids = engine.tokenize(prompts)
    requests = [Request(f"r{i}", p, limit, **fields) for i, p in enumerate(ids)]
    return requests, engine.generate(requests)


@pytest.fixture(scope="module")
def model(tiny_model):
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")
    return loaded.eval()


def eos_of(model) -> int:
    return model.generation_config.eos_token_id


def cut_eos(tokens: list[int], stops: set[int]) -> list[int]:
    return next((tokens[:i] for i, t in enumerate(tokens) if t in stops), tokens)


@torch.inference_mode()
def reference_loop(model, prompt: list[int], limit: int, processors=(), key: int | None = None, stops=()):
    """One row decoded with a full forward per step: logits -> processors(ids, scores) -> (+ keyed noise)
    -> argmax. What a one-row `generate` with these processors does, with our sampler's noise."""
    ids, stops = list(prompt), {eos_of(model), *stops}
    for _ in range(limit):
        scores = model(torch.tensor([ids])).logits[:, -1].float()
        for proc in processors:
            scores = proc(torch.tensor([ids]), scores)
        if key is not None:
            scores = scores + gumbel_noise(torch.tensor([step_key(key, len(ids))]), scores.shape[-1])
        ids.append(int(scores.argmax(-1)))
        if ids[-1] in stops:
            break
    return cut_eos(ids[len(prompt) :], stops)


# ---------------------------------------------------------------- structured output

SCHEMAS = {
    "enum": {"type": "string", "enum": ["red", "green", "blue"]},
    "nested": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 3},
            "size": {"type": "object", "properties": {"w": {"type": "integer"}}, "required": ["w"]},
            "ok": {"type": "boolean"},
        },
        "required": ["name", "size", "ok"],
        "additionalProperties": False,
    },
    "array": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 3},
}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_stop_row_is_valid_json_for_its_schema(tiny_model, strategy, name):
    schema = SCHEMAS[name]
    engine = make_engine(tiny_model, strategy, json_schema=schema, temperature=1.0, seed=4, n=2)
    try:
        _, done = generate(engine, PROMPTS[:4], 64)
        reasons = [r for c in done for r in c.finish_reasons]
        texts = [t for c in done for t in c.texts]
        assert "stop" in reasons, reasons  # the test proves something only if rows finish
        for text, reason in zip(texts, reasons, strict=True):
            if reason == "stop":
                jsonschema.validate(json.loads(text), schema)
            else:
                assert reason == "length"
    finally:
        engine.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_regex_and_choices_hold_for_every_row(tiny_model, strategy):
    for option, check in (
        ({"regex": r"[a-c]{2,4}-[0-9]{1,2}"}, lambda t: re.fullmatch(r"[a-c]{2,4}-[0-9]{1,2}", t)),
        ({"choices": ["yes", "no", "not sure"]}, lambda t: t in ("yes", "no", "not sure")),
    ):
        engine = make_engine(tiny_model, strategy, **option)
        try:
            _, done = generate(engine, PROMPTS, 20)
            assert all(c.finish_reasons == ["stop"] and check(c.texts[0]) for c in done), done
        finally:
            engine.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_row_cut_by_its_limit_says_length(tiny_model, strategy):
    engine = make_engine(tiny_model, strategy, json_schema=SCHEMAS["nested"])
    try:
        _, done = generate(engine, PROMPTS[:2], 3)
        assert [c.finish_reasons for c in done] == [["length"], ["length"]]
    finally:
        engine.close()


def test_greedy_constrained_equals_masked_reference(tiny_model, model):
    """Greedy under a grammar = argmax of the masked logits at every step (xgrammar's own matcher)."""
    import xgrammar as xgr
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=model.config.vocab_size)
    grammar = xgr.Grammar.from_json_schema(json.dumps(SCHEMAS["array"]), any_whitespace=False)
    compiled = xgr.GrammarCompiler(info).compile_grammar(grammar)

    class Mask:
        def __init__(self):
            self.matcher, self.seen = xgr.GrammarMatcher(compiled), None

        def __call__(self, ids, scores):
            if self.seen is not None:
                self.matcher.accept_token(int(ids[0, -1]))
            self.seen = True
            bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
            self.matcher.fill_next_token_bitmask(bitmask)
            xgr.apply_token_bitmask_inplace(scores, bitmask)
            return scores

    ids = tokenizer(PROMPTS[3])["input_ids"]
    expected = reference_loop(model, ids, 30, [Mask()])
    for strategy in STRATEGIES:
        engine = make_engine(tiny_model, strategy, json_schema=SCHEMAS["array"])
        try:
            assert engine.generate([Request("a", ids, 30)])[0].token_ids == [expected]
        finally:
            engine.close()


def test_strings_with_length_limits_admit_no_raw_control_characters(tiny_model):
    """JSON forbids raw control characters in strings; a byte-level vocabulary has a token for each."""
    from transformers import AutoTokenizer

    from runner.engine.constraints import Grammars
    from runner.engine.types import Constraint

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    grammars = Grammars(tokenizer, {tokenizer.eos_token_id}, len(tokenizer))
    for schema in (
        {"type": "string", "maxLength": 8},
        {"type": "string", "minLength": 1},
        {"type": "string"},
    ):
        compiled = grammars.compiled(Constraint("json_schema", json.dumps(schema)))
        import xgrammar as xgr

        assert xgr.GrammarMatcher(compiled).accept_string('"ab')
        assert not xgr.GrammarMatcher(compiled).accept_string('"a\x00'), schema


def test_bad_schema_is_a_one_line_config_error_naming_the_field(tmp_path):
    base = {"model": {"path": "demo:tiny-llama"}, "data": {"source": "x.jsonl"}}
    with pytest.raises(ConfigError, match=r"^sampling\.json_schema: does not compile"):
        build_config({**base, "sampling": {"json_schema": {"type": "integer", "minimum": "x"}}})
    with pytest.raises(ConfigError, match=r"^sampling\.regex: does not compile"):
        build_config({**base, "sampling": {"regex": "[a-"}})
    with pytest.raises(ConfigError, match=r"^sampling: set at most one of json_schema, regex, choices"):
        build_config({**base, "sampling": {"regex": "a+", "choices": ["a"]}})
    with pytest.raises(ConfigError, match=r"data.adapter_column needs model.adapters"):
        build_config({**base, "data": {"source": "x.jsonl", "adapter_column": "adapter"}})
    with pytest.raises(ConfigError, match=r"^data.prompt: system needs chat: true"):
        build_config({**base, "data": {"source": "x.jsonl", "prompt": {"column": "q", "system": "hi"}}})
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMAS["enum"]))
    cfg = build_config({**base, "sampling": {"json_schema": str(schema_file)}})
    assert json.loads(cfg.sampling.json_schema) == SCHEMAS["enum"]


# ---------------------------------------------------------------- stage: columns, per-row schema, chat


def stage_for(model_path: str, strategy: str = "padded", data=None, sampling=None, output=None, model=None):
    cfg = build_config(
        {
            "model": {"path": model_path, "dtype": "float32", **(model or {})},
            "data": {"source": "unused.jsonl", **(data or {})},
            "sampling": {"max_new_tokens": 24, **(sampling or {})},
            "batching": {"strategy": strategy, "token_budget": 4096, "max_batch_size": 8},
            "output": output or {},
        }
    )
    return GenerationStage(cfg)


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{"id": f"{i:08d}", **r} for i, r in enumerate(rows)])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_per_row_schema_column_parse_json_and_token_ids(tiny_model, strategy):
    stage = stage_for(
        tiny_model,
        strategy,
        data={"json_schema_column": "schema"},
        sampling={"max_new_tokens": 40},
        output={"parse_json": True, "token_ids": True},
    )
    rows = [
        {"prompt": "colour?", "schema": json.dumps(SCHEMAS["enum"])},
        {"prompt": "flags?", "schema": json.dumps(SCHEMAS["array"])},
        {"prompt": "free text", "schema": None},
        {"prompt": "broken", "schema": json.dumps({"type": "integer", "minimum": "x"})},
    ]
    out = stage(table(rows)).to_pylist()
    assert out[0]["finish_reason"] == "stop" and json.loads(out[0]["parsed"]) in SCHEMAS["enum"]["enum"]
    if out[1]["finish_reason"] == "stop":
        jsonschema.validate(json.loads(out[1]["parsed"]), SCHEMAS["array"])
    tokenizer = stage.engine.tokenizer
    for row in out[:3]:
        assert tokenizer.decode(row["token_ids"], skip_special_tokens=True) == row["generation"]
    assert out[3]["finish_reason"] == "error" and "column 'schema'" in out[3]["error"]
    assert out[3]["parsed"] is None and out[3]["token_ids"] is None
    stage.engine.close()


def test_output_columns_unchanged_when_options_unused(tiny_model):
    stage = stage_for(tiny_model)
    from runner.io.outputs import OUTPUT_COLUMNS

    names = stage(table([{"prompt": "Hello"}])).schema.names
    assert names == list(OUTPUT_COLUMNS)  # the base columns only, no option's column


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% if not enable_thinking %}(no thinking){% endif %}{% endif %}"
)


def test_chat_prompt_from_a_plain_column_matches_apply_chat_template(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = CHAT_TEMPLATE
    cfg = build_config(
        {
            "model": {"path": tiny_model},
            "data": {
                "source": "x.jsonl",
                "prompt": {
                    "column": "q",
                    "chat": True,
                    "system": "Answer briefly.",
                    "chat_template_kwargs": {"enable_thinking": False},
                    "assistant_prefix": '{"answer": ',
                },
            },
        }
    )
    built = PromptBuilder(cfg.data.prompt, tokenizer).build({"q": "東京?"})
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "東京?"}]
    expected = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert built == expected + '{"answer": ' and "(no thinking)" in built


def test_chat_stage_tokenizes_without_a_second_bos_and_prefills_the_prefix(tiny_model, model):
    stage = stage_for(
        tiny_model, data={"prompt": {"column": "prompt", "chat": True, "assistant_prefix": "Sure"}}
    )
    out = stage(table([{"prompt": "Hi there"}])).to_pylist()[0]
    tokenizer = stage.engine.tokenizer
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi there"}], tokenize=False, add_generation_prompt=True
    )
    assert out["prompt"] == text + "Sure"
    ids = tokenizer(text + "Sure", add_special_tokens=False)["input_ids"]
    assert out["prompt_tokens"] == len(ids)
    expected = reference_loop(model, ids, 24)
    assert out["generation"] == tokenizer.decode(expected, skip_special_tokens=True)


# ---------------------------------------------------------------- logprobs


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_logprobs_equal_a_plain_forward_pass(tiny_model, model, strategy):
    engine = make_engine(tiny_model, strategy, logprobs=3, prompt_logprobs=True, temperature=0.8, n=2)
    try:
        requests, done = generate(engine, PROMPTS[:3], 8)
        for request, completion in zip(requests, done, strict=True):
            for tokens, logprobs in zip(completion.token_ids, completion.logprobs, strict=True):
                full = request.prompt_ids + tokens
                with torch.inference_mode():
                    logp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)
                assert len(logprobs) == len(tokens)
                for i, (token, (chosen, top)) in enumerate(zip(tokens, logprobs, strict=True)):
                    row = logp[len(request.prompt_ids) + i - 1]
                    assert chosen.token_id == token
                    assert chosen.logprob == pytest.approx(row[token].item(), abs=1e-4)
                    values, ids = row.topk(3)
                    assert [t.token_id for t in top] == ids.tolist()
                    assert [t.logprob for t in top] == pytest.approx(values.tolist(), abs=1e-4)
            prompt = completion.prompt_logprobs
            assert prompt[0] is None and len(prompt) == len(request.prompt_ids)
            expected = logp[torch.arange(len(request.prompt_ids) - 1), torch.tensor(request.prompt_ids[1:])]
            assert prompt[1:] == pytest.approx(expected.tolist(), abs=1e-4)
    finally:
        engine.close()


def test_logprob_columns_in_the_stage(tiny_model):
    stage = stage_for(tiny_model, sampling={"logprobs": 2, "prompt_logprobs": True, "max_new_tokens": 4})
    out = stage(table([{"prompt": "Hello"}, {"prompt": None}])).to_pylist()
    first = out[0]["logprobs"]
    assert len(first) == out[0]["completion_tokens"] and len(first[0]["top"]) == 2
    assert set(first[0]) == {"token_id", "token", "logprob", "top"}
    assert out[1]["logprobs"] is None and out[1]["prompt_logprobs"] is None
    stage.engine.close()


# ---------------------------------------------------------------- sampling options


def processors_for(**options):
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    chain = []
    if "repetition_penalty" in options:
        chain.append(RepetitionPenaltyLogitsProcessor(options["repetition_penalty"]))
    if "temperature" in options:
        chain.append(TemperatureLogitsWarper(options["temperature"]))
    if "top_p" in options:
        chain.append(TopPLogitsWarper(options["top_p"]))
    if "min_p" in options:
        chain.append(MinPLogitsWarper(options["min_p"]))
    return chain


OPTION_CASES = {
    "repetition_penalty greedy": {"repetition_penalty": 1.8},
    "min_p sampled": {"temperature": 1.5, "min_p": 0.2},
    "top_p + repetition sampled": {"temperature": 1.2, "top_p": 0.8, "repetition_penalty": 1.3},
}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_sampling_options_equal_transformers_processors_on_one_row(tiny_model, model, strategy, case):
    options = OPTION_CASES[case]
    engine = make_engine(tiny_model, strategy, seed=5, **options)
    try:
        requests, done = generate(engine, PROMPTS[:3], 12)
        for request, completion in zip(requests, done, strict=True):
            key = row_key(5, request.id, 0) if "temperature" in options else None
            expected = reference_loop(model, request.prompt_ids, 12, processors_for(**options), key)
            assert completion.token_ids == [expected], request.id
    finally:
        engine.close()


def openai_penalty(presence: float, frequency: float, prompt_length: int):
    """OpenAI's definition (no transformers processor): over generated tokens only."""

    def process(ids, scores):
        generated = ids[0, prompt_length:]
        counts = torch.bincount(generated, minlength=scores.shape[-1]).float()
        return scores - frequency * counts - presence * (counts > 0).float()

    return process


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_presence_and_frequency_penalties_follow_openai_semantics(tiny_model, model, strategy):
    engine = make_engine(tiny_model, strategy, presence_penalty=1.5, frequency_penalty=0.7)
    try:
        requests, done = generate(engine, PROMPTS[:3], 16)
        plain = [reference_loop(model, r.prompt_ids, 16) for r in requests]
        for request, completion in zip(requests, done, strict=True):
            penalty = openai_penalty(1.5, 0.7, len(request.prompt_ids))
            assert completion.token_ids == [reference_loop(model, request.prompt_ids, 16, [penalty])]
        assert [c.token_ids[0] for c in done] != plain  # the penalties changed something
    finally:
        engine.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_stop_token_ids_end_a_row_like_eos(tiny_model, model, strategy):
    ids = make_engine(tiny_model, "padded").tokenize(PROMPTS[:1])[0]
    free = reference_loop(model, ids, 12)
    stop = free[3]
    engine = make_engine(tiny_model, strategy, stop_token_ids=[stop])
    try:
        done = engine.generate([Request("a", ids, 12)])[0]
        assert done.token_ids == [free[: free.index(stop)]] and done.finish_reasons == ["stop"]
    finally:
        engine.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_per_row_seed_temperature_and_top_p(tiny_model, model, strategy):
    engine = make_engine(tiny_model, strategy, temperature=0.9, top_p=0.9, seed=1)
    rows = [
        RowSampling(),
        RowSampling(seed=11),
        RowSampling(temperature=0.0),
        RowSampling(temperature=1.4, top_p=0.5),
    ]
    try:
        ids = engine.tokenize(PROMPTS[:1])[0]
        requests = [Request(f"r{i}", ids, 10, sampling=s) for i, s in enumerate(rows)]
        done = engine.generate(requests)
        for request, completion in zip(requests, done, strict=True):
            own = request.sampling
            temperature = 0.9 if own.temperature is None else own.temperature
            top_p = own.top_p or 0.9
            if temperature == 0:
                expected = reference_loop(model, ids, 10)
            else:
                chain = processors_for(temperature=temperature, top_p=top_p)
                key = row_key(1 if own.seed is None else own.seed, request.id, 0)
                expected = reference_loop(model, ids, 10, chain, key)
            assert completion.token_ids == [expected], request.id
    finally:
        engine.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_sampled_row_in_a_greedy_job(tiny_model, model, strategy):
    """continuous: a greedy job's manager has no sampling processors; such a row runs padded, exactly."""
    engine = make_engine(tiny_model, strategy)
    try:
        ids = engine.tokenize(PROMPTS[:2])
        requests = [
            Request("s", ids[0], 10, sampling=RowSampling(temperature=0.8, seed=3)),
            Request("g", ids[1], 10),
        ]
        done = engine.generate(requests)
        key = row_key(3, "s", 0)
        assert done[0].token_ids == [reference_loop(model, ids[0], 10, processors_for(temperature=0.8), key)]
        assert done[1].token_ids == [reference_loop(model, ids[1], 10)]
    finally:
        engine.close()


def test_per_row_sampling_columns_in_the_stage(tiny_model):
    stage = stage_for(
        tiny_model,
        data={"seed_column": "seed", "temperature_column": "t", "top_p_column": "p"},
        sampling={"max_new_tokens": 6},
    )
    rows = [
        {"prompt": "Hello", "seed": 3, "t": 0.8, "p": None},
        {"prompt": "Hello", "seed": None, "t": None, "p": None},
        {"prompt": "Hello", "seed": 3, "t": -1.0, "p": None},
        {"prompt": "Hello", "seed": 3, "t": 0.8, "p": 0.0},
    ]
    out = stage(table(rows)).to_pylist()
    engine = stage.engine
    ids = engine.tokenize(["Hello"])[0]
    sampled = engine.generate([Request(out[0]["id"], ids, 6, sampling=RowSampling(temperature=0.8, seed=3))])[
        0
    ]
    greedy = engine.generate([Request(out[1]["id"], ids, 6)])[0]
    assert out[0]["generation"] == sampled.texts[0] and out[1]["generation"] == greedy.texts[0]
    assert "column 't' is -1.0: must be >= 0" in out[2]["error"]
    assert "column 'p' is 0.0: must be > 0 and <= 1" in out[3]["error"]
    stage.engine.close()


def test_n_samples_are_distinct_and_reproducible_whatever_the_batching(tiny_model):
    outputs = []
    for strategy, batch in (("padded", 8), ("padded", 1), ("continuous", 8)):
        batching = BatchingConfig(strategy=strategy, token_budget=4096, max_batch_size=batch)
        sampling = SamplingConfig(temperature=1.0, min_p=0.05, n=3, seed=9, max_new_tokens=10)
        engine = Engine(ModelConfig(path=tiny_model, dtype="float32"), sampling, batching)
        _, done = generate(engine, PROMPTS, 10)
        outputs.append([c.token_ids for c in done])
        engine.close()
    assert outputs[0] == outputs[1] == outputs[2]
    assert all(len({tuple(s) for s in samples}) > 1 for samples in outputs[0])


# ---------------------------------------------------------------- LoRA adapters


def make_adapter(model_path: str, directory, seed: int) -> str:
    """A LoRA adapter with random non-zero A and B (so it changes outputs), saved with peft."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(str(directory))
    return str(directory)


def merged_generate(model_path: str, adapter: str | None, prompts: list[list[int]], limit: int):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")
    merged = (PeftModel.from_pretrained(base, adapter).merge_and_unload() if adapter else base).eval()
    eos = merged.generation_config.eos_token_id
    outputs = []
    for ids in prompts:
        out = merged.generate(torch.tensor([ids]), max_new_tokens=limit, do_sample=False, pad_token_id=eos)
        outputs.append(cut_eos(out[0, len(ids) :].tolist(), {eos}))
    return outputs


@pytest.fixture(scope="module")
def adapter_paths(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(tiny_model, root / name, seed) for name, seed in (("a", 1), ("b", 2))}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_adapter_equals_generate_of_the_merged_model(tiny_model, adapter_paths, strategy):
    engine = make_engine(tiny_model, strategy, model={"adapter": adapter_paths["a"]})
    try:
        assert engine.strategy == strategy  # a merged adapter is a plain model: both strategies run it
        ids = engine.tokenize(PROMPTS)
        expected = merged_generate(tiny_model, adapter_paths["a"], ids, 10)
        assert expected != merged_generate(tiny_model, None, ids, 10)  # the adapter changes outputs
        done = engine.generate([Request(f"r{i}", p, 10) for i, p in enumerate(ids)])
        assert [c.token_ids[0] for c in done] == expected
    finally:
        engine.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_several_adapters_per_row_equal_their_merged_models(tiny_model, adapter_paths, strategy):
    problem = compat.adapter_switching_problem()
    if problem is not None:  # transformers 5.24 + peft 0.21: refused at start, naming both versions
        with pytest.raises(ConfigError, match=r"model.adapters: transformers .* peft >= .*, installed peft"):
            stage_for(
                tiny_model, strategy, data={"adapter_column": "adapter"}, model={"adapters": adapter_paths}
            )
        return
    stage = stage_for(
        tiny_model,
        strategy,
        data={"adapter_column": "adapter"},
        sampling={"max_new_tokens": 10},
        model={"adapters": adapter_paths},
    )
    names = ["a", "b", None, "b", "a", None, "c"]
    prompts = (PROMPTS * 2)[: len(names)]
    out = stage(table([{"prompt": p, "adapter": n} for p, n in zip(prompts, names, strict=True)])).to_pylist()
    tokenizer = stage.engine.tokenizer
    for name in ("a", "b", None):
        rows = [i for i, n in enumerate(names) if n == name]
        ids = [tokenizer(prompts[i])["input_ids"] for i in rows]
        expected = merged_generate(tiny_model, adapter_paths.get(name), ids, 10)
        got = [out[i]["generation"] for i in rows]
        assert got == [tokenizer.decode(e, skip_special_tokens=True) for e in expected], name
    assert out[-1]["finish_reason"] == "error" and "not one of model.adapters" in out[-1]["error"]
    stage.engine.close()
