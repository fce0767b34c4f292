"""The generation stage: Arrow rows in, output rows out; batching must change nothing."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from jobs.generate.stage import GenerationStage
from runner.config import build_config
from runner.engine import Engine
from tests.conftest import PROMPTS


@pytest.fixture(scope="module")
def engine(tiny_model):
    cfg = stage_config(tiny_model)
    return Engine(cfg.model, cfg.sampling, cfg.batching)


def stage_config(model_path, data=None, sampling=None, batching=None):
    return build_config(
        {
            "model": {"path": model_path, "dtype": "float32"},
            "data": {"source": "unused.jsonl", **(data or {})},
            "sampling": {"max_new_tokens": 12, **(sampling or {})},
            "batching": {"token_budget": 1024, "max_batch_size": 4, **(batching or {})},
        }
    )


def make_stage(engine, model_path, **sections) -> GenerationStage:
    """A stage with its own engine (as a replica has), built from the same saved model."""
    return GenerationStage(stage_config(model_path, **sections))


def reference(engine, prompt_ids: list[int], limit: int) -> list[int]:
    """Unbatched model.generate of one row, cut at EOS: the oracle."""
    out = engine.model.generate(
        torch.tensor([prompt_ids]),
        max_new_tokens=limit,
        do_sample=False,
        pad_token_id=engine.tokenizer.pad_token_id,
    )[0, len(prompt_ids) :].tolist()
    eos = engine.tokenizer.eos_token_id
    return out[: out.index(eos)] if eos in out else out


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{"id": f"{i:08d}", **r} for i, r in enumerate(rows)])


def test_greedy_batched_equals_unbatched_reference(engine, tiny_model):
    stage = make_stage(engine, tiny_model, data={"max_new_tokens_column": "limit"})
    rows = [{"prompt": p, "limit": 3 + 5 * (i % 3)} for i, p in enumerate(PROMPTS * 2)]
    out = stage(table(rows)).to_pylist()
    assert [r["id"] for r in out] == [f"{i:08d}" for i in range(len(rows))]  # order and ids kept
    for row, res in zip(rows, out, strict=True):
        ids = engine.tokenize([row["prompt"]])[0]
        expected = reference(engine, ids, row["limit"])
        assert res["generation"] == engine.tokenizer.decode(expected, skip_special_tokens=True)
        assert res["completion_tokens"] == len(expected) and res["prompt_tokens"] == len(ids)
        assert res["finish_reason"] == ("length" if len(expected) == row["limit"] else "stop")
        assert res["error"] is None and res["prompt"] == row["prompt"]


def test_chat_messages_render_with_the_tokenizer_template(engine, tiny_model):
    stage = make_stage(engine, tiny_model, data={"prompt": {"messages_column": "messages"}})
    messages = [
        [{"role": "user", "content": "Hi there"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "東京?"}],
    ]
    out = stage(table([{"messages": m} for m in messages])).to_pylist()
    for msgs, res in zip(messages, out, strict=True):
        text = engine.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert res["prompt"] == text and text.endswith("<|assistant|>")
        ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert res["generation"] == engine.tokenizer.decode(
            reference(engine, ids, 12), skip_special_tokens=True
        )


def test_jinja_template_over_columns(engine, tiny_model):
    stage = make_stage(engine, tiny_model, data={"prompt": {"template": "Q: {{ q }} ({{ lang }})\nA:"}})
    out = stage(table([{"q": "capital of France?", "lang": "fr"}])).to_pylist()
    assert out[0]["prompt"] == "Q: capital of France? (fr)\nA:"


def test_bad_rows_become_error_rows_and_others_still_generate(engine, tiny_model):
    stage = make_stage(engine, tiny_model, data={"max_new_tokens_column": "limit"})
    rows = [
        {"prompt": "fine", "limit": 4},
        {"prompt": None, "limit": 4},
        {"prompt": "   ", "limit": 4},
        {"prompt": "fine too", "limit": -2},
        {"prompt": "fine three", "limit": 2.5},
        {"prompt": "long " * 5000, "limit": 4},
    ]
    out = stage(table(rows)).to_pylist()
    assert [r["finish_reason"] for r in out] == ["length", "error", "error", "error", "error", "error"]
    reasons = [r["error"] for r in out]
    assert reasons[0] is None
    assert "is null" in reasons[1] and "is empty" in reasons[2]
    assert "positive integer" in reasons[3] and "positive integer" in reasons[4]
    assert "> model context" in reasons[5]
    assert all(r["generation"] is None for r in out[1:])


def test_overlong_prompt_can_be_truncated_from_the_left(engine, tiny_model):
    stage = make_stage(engine, tiny_model, data={"overlong": "truncate_left"})
    out = stage(table([{"prompt": "long " * 5000}])).to_pylist()[0]
    assert out["error"] is None and out["prompt_tokens"] + 12 <= engine.context_length


def test_n_samples_are_in_samples(engine, tiny_model):
    stage = make_stage(engine, tiny_model, sampling={"n": 3, "temperature": 0.8, "seed": 1})
    out = stage(table([{"prompt": "Hello"}, {"prompt": "Write a poem"}]))
    assert out.schema.field("generation").type == pa.string()  # the first sample's, whatever n
    rows = out.to_pylist()
    assert all(len(r["samples"]) == 3 and r["samples"][0]["text"] == r["generation"] for r in rows)
    again = stage(table([{"prompt": "Hello"}, {"prompt": "Write a poem"}])).to_pylist()
    assert [r["samples"] for r in again] == [r["samples"] for r in rows]  # same seed, same text


def test_cpu_threads_never_exceed_the_cores_of_the_process():
    from jobs.generate.stage import set_cpu_threads

    before = torch.get_num_threads()
    try:
        assert set_cpu_threads(1) == 1 == torch.get_num_threads()
        cores = set_cpu_threads(10_000)  # a share computed for a bigger node
        assert 1 <= cores < 10_000 and torch.get_num_threads() == cores
    finally:
        torch.set_num_threads(before)
