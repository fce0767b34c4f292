"""OpenAI batch request files: parsing request bodies in the shapes OpenAI documents, the file checks
OpenAI rejects a batch for, and the request rows a chunk of the file becomes. No model needed."""

from __future__ import annotations

import json

import pytest

from jobs.openai_batch.params import CHAT, COMPLETIONS, Params, RequestProblem, parse, problem_of
from jobs.openai_batch.requests import COLUMNS, parse_lines, validate_file
from runner.engine.types import RowSampling

MESSAGES = [{"role": "user", "content": "Hello"}]


def chat(**body) -> dict:
    return {"model": "m", "messages": MESSAGES, **body}


def test_chat_with_every_supported_field():
    body = chat(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "you"}],
            },
            {"role": "assistant", "content": "Sure:"},
        ],
        max_completion_tokens=7,
        temperature=0.7,
        top_p=0.9,
        seed=-3,
        stop="END",
        n=3,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        logprobs=True,
        top_logprobs=4,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        user="u-1",
        metadata={"k": "v"},
        store=False,
        stream=False,
    )
    got = parse(CHAT, body)
    assert isinstance(got, Params)
    assert got.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello, you"},
        {"role": "assistant", "content": "Sure:"},
    ]
    assert got.prefill and got.max_tokens == 7 and got.response_format == {"type": "object"}
    assert got.sampling == RowSampling(
        temperature=0.7, top_p=0.9, seed=-3, n=3, stop=("END",), presence_penalty=0.5,
        frequency_penalty=-0.25, logprobs=4,
    )  # fmt: skip


def test_chat_defaults_and_max_tokens():
    got = parse(CHAT, chat(max_tokens=5, response_format={"type": "json_object"}))
    assert got.sampling is None and got.max_tokens == 5 and not got.prefill
    assert got.response_format == {"type": "object"}
    assert parse(CHAT, chat(logprobs=True)).sampling.logprobs == 0  # the chosen token's only
    assert parse(CHAT, chat(response_format={"type": "text"})).response_format is None


def test_completions_shapes():
    got = parse(
        COMPLETIONS, {"model": "m", "prompt": "Once", "max_tokens": 4, "stop": ["a", "b"], "logprobs": 2}
    )
    assert got.prompt == "Once" and got.prompt_ids is None and got.sampling.stop == ("a", "b")
    assert got.sampling.logprobs == 2
    assert parse(COMPLETIONS, {"model": "m", "prompt": ["Once"]}).prompt == "Once"
    assert parse(COMPLETIONS, {"model": "m", "prompt": [1, 2, 3]}).prompt_ids == [1, 2, 3]
    assert parse(COMPLETIONS, {"model": "m", "prompt": "x", "n": 2, "best_of": 2}).sampling.n == 2


@pytest.mark.parametrize(
    ("endpoint", "body", "code", "param"),
    [
        (
            CHAT,
            chat(tools=[{"type": "function", "function": {"name": "f"}}]),
            "unsupported_parameter",
            "tools",
        ),
        (CHAT, chat(tool_choice="auto"), "unsupported_parameter", "tool_choice"),
        (CHAT, chat(audio={"voice": "alloy", "format": "mp3"}), "unsupported_parameter", "audio"),
        (CHAT, chat(modalities=["text", "audio"]), "unsupported_parameter", "modalities"),
        (CHAT, chat(logit_bias={"1": 5}), "unsupported_parameter", "logit_bias"),
        (CHAT, chat(functions=[{"name": "f"}]), "unsupported_parameter", "functions"),
        (CHAT, chat(frobnicate=1), "unknown_parameter", "frobnicate"),
        (CHAT, chat(stream=True), "unsupported_value", "stream"),
        (
            CHAT,
            chat(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
                    }
                ]
            ),
            "unsupported_parameter",
            "messages[0].content[0]",
        ),
        (
            CHAT,
            chat(messages=[{"role": "tool", "content": "42", "tool_call_id": "c1"}]),
            "unsupported_parameter",
            "messages[0]",
        ),
        (CHAT, chat(messages=[{"role": "robot", "content": "x"}]), "invalid_value", "messages[0].role"),
        (CHAT, chat(temperature=2.5), "invalid_value", "temperature"),
        (CHAT, chat(temperature="0.5"), "invalid_value", "temperature"),
        (CHAT, chat(n=0), "invalid_value", "n"),
        (CHAT, chat(top_logprobs=3), "invalid_value", "top_logprobs"),
        (CHAT, chat(messages=[]), "invalid_value", "messages"),
        (CHAT, {"messages": MESSAGES}, "missing_required_parameter", "model"),
        (COMPLETIONS, {"model": "m", "prompt": "x", "echo": True}, "unsupported_value", "echo"),
        (COMPLETIONS, {"model": "m", "prompt": "x", "suffix": "y"}, "unsupported_parameter", "suffix"),
        (COMPLETIONS, {"model": "m", "prompt": "x", "best_of": 3}, "unsupported_value", "best_of"),
        (COMPLETIONS, {"model": "m", "prompt": "x", "logprobs": 6}, "invalid_value", "logprobs"),
        (COMPLETIONS, {"model": "m", "prompt": ["a", "b"]}, "unsupported_value", "prompt"),
        (COMPLETIONS, {"model": "m"}, "missing_required_parameter", "prompt"),
        ("/v1/embeddings", {"model": "m", "input": "x"}, "invalid_url", "url"),
    ],
)
def test_refused_requests_name_the_field(endpoint, body, code, param):
    got = parse(endpoint, body)
    assert isinstance(got, RequestProblem), got
    assert (got.code, got.param) == (code, param)
    assert problem_of(got.line()) == got  # the error column's text reads back as the same problem


def test_problem_of_other_text_is_none():
    assert problem_of("engine: RuntimeError: boom") is None


def request_line(custom_id, body=None, url=CHAT, method="POST") -> str:
    return json.dumps({"custom_id": custom_id, "method": method, "url": url, "body": body or chat()})


def test_parse_lines_rows_and_input_errors():
    data = "\n".join(
        [request_line("a"), "", "not json", "[1, 2]", json.dumps({"method": "POST", "url": CHAT, "body": chat()}),
         request_line(7), request_line("b", url="/v1/embeddings")]
    ).encode()  # fmt: skip
    table = parse_lines(data, "in.jsonl", 10)
    assert table.schema == COLUMNS
    rows = table.to_pylist()
    assert [r["line"] for r in rows] == [10, 12, 13, 14, 15, 16]  # the blank line 11 is no row
    assert rows[0]["custom_id"] == "a" and rows[0]["model"] == "m" and rows[0]["_input_error"] is None
    assert json.loads(rows[0]["body"]) == chat()
    assert "line 12: not JSON" in rows[1]["_input_error"]
    assert "not a request object" in rows[2]["_input_error"]
    assert rows[3]["custom_id"] is None and "custom_id" in rows[3]["_input_error"]
    assert rows[4]["custom_id"] == "7" and "custom_id" in rows[4]["_input_error"]
    assert "url '/v1/embeddings'" in rows[5]["_input_error"]


def test_validate_file_reports_what_openai_rejects(tmp_path):
    path = tmp_path / "in.jsonl"
    lines = [
        request_line("a"),
        request_line("a"),
        "{oops",
        request_line("c", method="GET"),
        request_line("d", url="/v1/completions", body={"model": "m", "prompt": "x"}),
        json.dumps({"custom_id": "e", "method": "POST", "url": CHAT}),
        request_line("f", body={"messages": MESSAGES}),
        request_line("g", body=chat(tools=[])),  # a per-request problem: not the file's
    ]
    path.write_text("\n".join(lines) + "\n")
    errors = validate_file(str(path), endpoint=CHAT, models={"m"})
    assert [(e["line"], e["code"]) for e in errors] == [
        (2, "duplicate_custom_id"),
        (3, "invalid_json_line"),
        (4, "invalid_method"),
        (5, "mismatched_endpoint"),
        (6, "missing_required_parameter"),
        (7, "missing_required_parameter"),
    ]
    assert all(set(e) == {"code", "message", "param", "line"} for e in errors)
    assert validate_file(str(path), max_lines=3)[-1]["code"] == "too_many_requests"


def test_validate_file_accepts_a_valid_file_and_refuses_an_empty_one(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(
        request_line("a") + "\n\n" + request_line("b", url=COMPLETIONS, body={"model": "m", "prompt": "x"})
    )
    assert validate_file(str(good)) == []
    assert validate_file(f"file://{good}", models={"m"}) == []  # a pyarrow URI
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert [e["code"] for e in validate_file(str(empty))] == ["empty_file"]
