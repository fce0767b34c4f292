"""The batch stage on the tiny demo model: a request's own options give what the same options give as
the job's (the generate stage, itself checked against unbatched `generate`), greedy chat text equals
the chat template + unbatched `generate`, and every result line is valid under the `openai` package's
own types. No Ray: the stage is called as a replica calls it."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from jobs.generate.stage import GenerationStage
from jobs.openai_batch import responses
from jobs.openai_batch.config import BatchConfig
from jobs.openai_batch.params import CHAT, COMPLETIONS
from jobs.openai_batch.requests import parse_lines
from jobs.openai_batch.results import request_counts, write_results
from jobs.openai_batch.stage import BatchStage
from runner.config import build_config
from runner.io.jobdir import JobDir
from tests.test_stage import reference

MODEL = "demo:tiny-llama"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]


def batch_config(tiny_model, tmp_path, sampling=None, adapters=None, strategy="padded") -> BatchConfig:
    model = {"path": tiny_model, "dtype": "float32", **({"adapters": adapters} if adapters else {})}
    return build_config(
        {
            "model": model,
            "batch": {
                "input": "unused.jsonl",
                "output_file": str(tmp_path / "out.jsonl"),
                "served_model_name": [MODEL],
            },
            "sampling": {"max_new_tokens": 6, **(sampling or {})},
            "batching": {"strategy": strategy, "token_budget": 2048, "max_batch_size": 8},
        },
        kind=BatchConfig,
    )


def generate_config(tiny_model, data, sampling=None, strategy="padded"):
    return build_config(
        {
            "model": {"path": tiny_model, "dtype": "float32"},
            "data": {"source": "unused.jsonl", "id_column": "key", **data},
            "sampling": {"max_new_tokens": 6, **(sampling or {})},
            "batching": {"strategy": strategy, "token_budget": 2048, "max_batch_size": 8},
        }
    )


def job_stage(tiny_model, data, sampling=None, strategy="padded") -> GenerationStage:
    """A generate stage whose engine has these options as the job's (what a request's own must equal)."""
    return GenerationStage(generate_config(tiny_model, data, sampling, strategy))


@pytest.fixture(scope="module")
def stage(tiny_model, tmp_path_factory):
    return BatchStage(batch_config(tiny_model, tmp_path_factory.mktemp("batch")))


@pytest.fixture(scope="module")
def continuous_stage(tiny_model, tmp_path_factory):
    made = BatchStage(batch_config(tiny_model, tmp_path_factory.mktemp("batch"), strategy="continuous"))
    yield made
    made.engine.close()


def request_rows(requests: list[dict]) -> pa.Table:
    """Request objects -> the rows the job's reader gives a replica (`id` first)."""
    data = "\n".join(json.dumps(r) for r in requests).encode()
    table = parse_lines(data, "in.jsonl", 1)
    lines = table.column(
        "line"
    ).to_pylist()  # a line without a custom_id is named by position, as the reader does
    ids = pa.array(
        [
            i or f"input-error-row-{n}"
            for i, n in zip(table.column("custom_id").to_pylist(), lines, strict=True)
        ]
    )
    return table.drop_columns(["custom_id"]).add_column(0, "id", ids)


def make(custom_id: str, body: dict, url: str = CHAT) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": MODEL, **body}}


def checked_line(row: dict) -> dict:
    """The row's output line, validated with openai's types (and the line shape: extra keys refused)."""
    line = responses.OutputLine.model_validate(responses.line(row, 1_700_000_000)).model_dump(mode="json")
    body = line["response"]["body"]
    if line["response"]["status_code"] == 200:
        kind = ChatCompletion if row["url"] == CHAT else Completion
        parsed = kind.model_validate(body)
        assert parsed.model_dump(mode="json", exclude_unset=True) == body
        assert parsed.usage.total_tokens == parsed.usage.prompt_tokens + parsed.usage.completion_tokens
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}
    return line


def test_greedy_chat_equals_chat_template_and_generate(stage, tiny_model):
    out = stage(request_rows([make("c1", {"messages": MESSAGES, "max_tokens": 6})])).to_pylist()[0]
    tokenizer = stage.engine.tokenizer
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    expected = tokenizer.decode(reference(stage.engine, list(ids), 6), skip_special_tokens=True)
    assert out["error"] is None and out["generation"] == expected
    assert [s["text"] for s in out["samples"]] == [expected]  # the batch stage lists every row's samples
    # the same prompt as a generate job's messages column
    gen = GenerationStage(
        generate_config(tiny_model, {"prompt": {"messages_column": "messages"}}), stage.engine
    )
    row = gen(pa.Table.from_pylist([{"id": "c1", "messages": MESSAGES}])).to_pylist()[0]
    assert row["generation"] == expected and row["prompt"] == out["prompt"]
    line = checked_line(out)
    assert line["response"]["body"]["choices"][0]["message"]["content"] == expected


def test_completion_text_equals_generate_job(stage, tiny_model):
    out = stage(request_rows([make("t1", {"prompt": "Once upon a time"}, COMPLETIONS)]))
    gen = GenerationStage(generate_config(tiny_model, {"prompt": {"column": "p"}}), stage.engine)
    row = gen(pa.Table.from_pylist([{"id": "t1", "p": "Once upon a time"}])).to_pylist()[0]
    out = out.to_pylist()[0]
    assert out["generation"] == row["generation"] and out["completion_tokens"] == row["completion_tokens"]
    assert checked_line(out)["response"]["body"]["object"] == "text_completion"


@pytest.mark.parametrize(
    ("body", "sampling"),
    [
        ({"temperature": 0.9, "seed": 11, "n": 3}, {"temperature": 0.9, "seed": 11, "n": 3}),
        ({"stop": ["e", "a"], "max_tokens": 12}, {"stop": ["e", "a"], "max_new_tokens": 12}),
        (
            {"presence_penalty": 1.5, "frequency_penalty": 0.5},
            {"presence_penalty": 1.5, "frequency_penalty": 0.5},
        ),
        (
            {"temperature": 0.8, "top_p": 0.7, "seed": 2, "n": 2},
            {"temperature": 0.8, "top_p": 0.7, "seed": 2, "n": 2},
        ),
    ],
)
@pytest.mark.parametrize("strategy", ["padded", "continuous"])
def test_request_options_equal_the_same_job_options(request, tiny_model, body, sampling, strategy):
    """A request's own n / seed / stop / penalties give exactly what the job's do (same row id: the
    sampling keys are the same), in both batching strategies (penalty rows leave continuous' manager)."""
    stage = request.getfixturevalue("stage" if strategy == "padded" else "continuous_stage")
    out = stage(request_rows([make("r1", {"prompt": "Hello there", **body}, COMPLETIONS)])).to_pylist()[0]
    job = job_stage(tiny_model, {"prompt": {"column": "p"}}, sampling, strategy)
    row = job(pa.Table.from_pylist([{"id": "r1", "p": "Hello there"}])).to_pylist()[0]
    job.engine.close()
    texts = [s["text"] for s in row["samples"]] if row["samples"] else [row["generation"]]
    assert out["error"] is None and [s["text"] for s in out["samples"]] == texts
    line = checked_line(out)
    assert len(line["response"]["body"]["choices"]) == len(texts)


def test_logprobs_equal_the_job_option_and_fit_openai_shapes(stage, tiny_model):
    rows = request_rows(
        [
            make("l1", {"messages": MESSAGES, "logprobs": True, "top_logprobs": 3}),
            make("l2", {"prompt": "Hello", "logprobs": 2}, COMPLETIONS),
            make("l3", {"prompt": "Hello"}, COMPLETIONS),
        ]
    )
    out = {r["id"]: r for r in stage(rows).to_pylist()}
    assert out["l3"]["logprobs"] is None
    chat = checked_line(out["l1"])["response"]["body"]["choices"][0]["logprobs"]["content"]
    assert len(chat) == out["l1"]["completion_tokens"] and all(len(t["top_logprobs"]) == 3 for t in chat)
    text = checked_line(out["l2"])["response"]["body"]["choices"][0]["logprobs"]
    row = job_stage(tiny_model, {"prompt": {"column": "p"}}, {"logprobs": 2})(
        pa.Table.from_pylist([{"id": "l2", "p": "Hello"}])
    ).to_pylist()[0]
    assert text["token_logprobs"] == [t["logprob"] for t in row["logprobs"]]
    assert text["tokens"] == [t["token"] for t in row["logprobs"]]


def test_json_schema_response_format_equals_the_job_schema(stage, tiny_model):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}}
    out = stage(request_rows([make("j1", {"messages": MESSAGES, "response_format": fmt, "max_tokens": 12})]))
    out = out.to_pylist()[0]
    sampling = {"json_schema": json.dumps(schema), "max_new_tokens": 12}
    job = job_stage(tiny_model, {"prompt": {"messages_column": "m"}}, sampling)
    row = job(pa.Table.from_pylist([{"id": "j1", "m": MESSAGES}])).to_pylist()[0]
    assert out["generation"] == row["generation"] and out["generation"].startswith("{")


def test_request_errors_are_error_lines(stage):
    rows = request_rows(
        [
            make("e1", {"messages": MESSAGES, "tools": []}),
            {**make("e2", {"messages": MESSAGES}), "body": {"model": "gpt-4o", "messages": MESSAGES}},
            make("e3", {"prompt": "x " * 5000, "max_tokens": 4}, COMPLETIONS),
            make("ok", {"messages": MESSAGES}),
            make("ok", {"messages": MESSAGES}),  # a repeated custom_id: as for any id column
        ]
    )
    rows = pa.concat_tables([rows, request_rows(["not a request"])])  # type: ignore[list-item]
    out = stage(rows).to_pylist()
    lines = [checked_line(r) for r in out]
    status = [line["response"]["status_code"] for line in lines]
    assert status == [400, 404, 400, 200, 400, 400]
    codes = [line["response"]["body"].get("error", {}).get("code") for line in lines]
    assert codes[:3] == ["unsupported_parameter", "model_not_found", "context_length_exceeded"]
    assert "duplicate id 'ok'" in lines[4]["response"]["body"]["error"]["message"]


def test_results_files_from_committed_parts(stage, tmp_path):
    requests = [make(f"q{i}", {"prompt": f"Hi {i}", "max_tokens": 3}, COMPLETIONS) for i in range(5)]
    requests.insert(2, make("bad", {"messages": MESSAGES, "n": 0}))
    requests.append(make("q1", {"messages": MESSAGES}))  # a repeated custom_id: not run, no line of its own
    rows = stage(request_rows(requests))
    job_dir = JobDir(str(tmp_path / "parts"))
    job_dir.prepare()
    with job_dir.writer(rows_per_file=2) as writer:  # parts committed in an order other than the file's
        writer.write(rows.take([6, 5, 4, 3]))
        writer.write(rows.take([2, 1, 0]))
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    counts = write_results(job_dir.path, str(out), str(err), order="input")
    assert counts == {"total": 6, "completed": 5, "failed": 1} == request_counts(job_dir.path)
    assert rows.column("error")[6].as_py().startswith("duplicate id 'q1'")  # in the parts, as for any id
    lines = [json.loads(t) for t in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == ["q0", "q1", "q2", "q3", "q4"]
    assert [json.loads(t)["custom_id"] for t in err.read_text().splitlines()] == ["bad"]
    inline = tmp_path / "all.jsonl"
    write_results(job_dir.path, f"file://{inline}", None, order="any")
    assert sorted(json.loads(t)["custom_id"] for t in inline.read_text().splitlines()) == sorted(
        ["bad", "q0", "q1", "q2", "q3", "q4"]
    )


def test_model_names_pick_adapters_as_the_adapter_column_does(tiny_model, tmp_path):
    """`model` naming one of the job's adapters runs it (vLLM serves LoRAs by name), as a generate job's
    adapter column does (itself checked against `generate` of the merged model)."""
    from runner import compat
    from tests.test_generation_features import make_adapter

    if compat.adapter_switching_problem() is not None:
        pytest.skip("these transformers / peft cannot switch adapters per batch")
    adapters = {name: make_adapter(tiny_model, tmp_path / name, seed) for name, seed in (("a", 1), ("b", 2))}
    stage = BatchStage(batch_config(tiny_model, tmp_path, adapters=adapters))
    names = ["a", MODEL, "b", "a", tiny_model]
    body = {"prompt": "The weather today", "max_tokens": 8}
    requests = [{**make(f"m{i}", body, COMPLETIONS)} for i in range(len(names))]
    for r, name in zip(requests, names, strict=True):
        r["body"]["model"] = name
    out = stage(request_rows(requests)).to_pylist()
    cfg = build_config(
        {
            "model": {"path": tiny_model, "dtype": "float32", "adapters": adapters},
            "data": {
                "source": "unused.jsonl",
                "id_column": "key",
                "prompt": {"column": "p"},
                "adapter_column": "ad",
            },
            "sampling": {"max_new_tokens": 8},
            "batching": {"strategy": "padded", "token_budget": 2048, "max_batch_size": 8},
        }
    )
    ads = [n if n in adapters else None for n in names]
    rows = [{"id": f"m{i}", "p": body["prompt"], "ad": a} for i, a in enumerate(ads)]
    want = GenerationStage(cfg, stage.engine)(pa.Table.from_pylist(rows)).to_pylist()
    assert [r["generation"] for r in out] == [w["generation"] for w in want]
    assert len({out[0]["generation"], out[1]["generation"], out[2]["generation"]}) == 3
    assert [checked_line(r)["response"]["body"]["model"] for r in out] == names
