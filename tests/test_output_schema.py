"""The output schema (runner.io.output_schema, docs/outputs.md) holds over every job kind and every `n`:
the same column types whatever n is, per-sample values in `samples`, the row's effective sampling
parameters, and a documentation page that names every column and field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest

from jobs.eval.config import RESERVED_COLUMNS, EvalConfig
from jobs.eval.stage import EvalStage
from jobs.generate.stage import GenerationStage
from runner.config import build_config
from runner.engine import Engine
from runner.errors import ConfigError
from runner.io.output_schema import (
    OPTIONAL_COLUMNS,
    OUTPUT_COLUMNS,
    SAMPLING_PARAMS,
    output_schema,
    result_fields,
    sample_type,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "outputs.md"
ALL_OPTIONS = {
    "sampling": {"logprobs": 2, "prompt_logprobs": True},
    "output": {"token_ids": True, "parse_json": True},
}


def generate_config(model: str, n: int, options: bool):
    sampling = {"max_new_tokens": 6, "n": n, **({"temperature": 0.8, "seed": 3} if n > 1 else {})}
    return build_config(
        {
            "model": {"path": model, "dtype": "float32"},
            "data": {"source": "unused.jsonl", "carry_columns": ["topic"], "temperature_column": "temp"},
            "sampling": {**sampling, **(ALL_OPTIONS["sampling"] if options else {})},
            "batching": {"strategy": "padded", "token_budget": 1024, "max_batch_size": 4},
            "output": ALL_OPTIONS["output"] if options else {},
        }
    )


@pytest.fixture(scope="module")
def engines(tiny_model) -> dict:
    """One engine per n (the engine holds the job's sampling)."""
    out = {}
    for n in (1, 3):
        cfg = generate_config(tiny_model, n, options=True)
        out[n] = Engine(cfg.model, cfg.sampling, cfg.batching)
    yield out
    for engine in out.values():
        engine.close()


ROWS = [
    {"id": "a", "prompt": "Hello there", "topic": "x", "temp": None},
    {"id": "b", "prompt": "The quick brown fox", "topic": "y", "temp": 0.5},
    {"id": "bad", "prompt": None, "topic": "z", "temp": None},  # an error row: no prompt
]


@pytest.mark.parametrize("options", [False, True])
@pytest.mark.parametrize("n", [1, 3])
def test_generate_output_follows_the_schema_for_every_n(tiny_model, engines, n, options):
    cfg = generate_config(tiny_model, n, options)
    out = GenerationStage(cfg, engine=engines[n])(pa.Table.from_pylist(ROWS))
    carried = pa.schema([("topic", pa.string())])
    assert out.schema.remove_metadata() == output_schema(cfg, carried)
    expected = ["id", "topic", *OUTPUT_COLUMNS[1:], *(OPTIONAL_COLUMNS if options else ())]
    assert out.schema.names == expected
    rows = {r["id"]: r for r in out.to_pylist()}
    for rid in ("a", "b"):
        row = rows[rid]
        assert row["error"] is None and isinstance(row["generation"], str)
        assert isinstance(row["finish_reason"], str) and row["time_taken_llm"] > 0
        params = row["sampling_params"]
        assert params["n"] == n and params["max_tokens"] == 6
        if n == 1:
            assert row["samples"] is None  # the one sample is `generation`
            assert row["completion_tokens"] <= 6
        else:
            samples = row["samples"]
            assert [s["index"] for s in samples] == list(range(n))
            assert samples[0]["text"] == row["generation"]
            assert samples[0]["finish_reason"] == row["finish_reason"]
            assert row["completion_tokens"] == sum(s["completion_tokens"] for s in samples)
            if options:
                assert samples[0]["token_ids"] == row["token_ids"]
                assert all(len(s["token_ids"]) == s["completion_tokens"] for s in samples)
        if options:
            assert isinstance(row["token_ids"], list) and isinstance(row["logprobs"], list)
    job_temperature = cfg.sampling.temperature
    assert rows["a"]["sampling_params"]["temperature"] == job_temperature
    assert rows["b"]["sampling_params"]["temperature"] == 0.5  # the row's own value
    bad = rows["bad"]
    assert bad["error"] and bad["error_kind"] == "row" and bad["finish_reason"] == "error"
    assert bad["generation"] is None and bad["samples"] is None and bad["completion_tokens"] == 0


def test_column_types_do_not_depend_on_n(tiny_model):
    one, many = (generate_config(tiny_model, n, options=True) for n in (1, 3))
    assert output_schema(one) == output_schema(many)


def eval_config(n: int) -> EvalConfig:
    sampling = {"max_new_tokens": 4, "n": n, **({"temperature": 0.7} if n > 1 else {})}
    task = {"data": {"source": "unused.jsonl", "prompt": {"template": "{{ q }}"}}}
    return build_config(
        {
            "model": {"path": "demo:tiny-llama", "dtype": "float32"},
            "sampling": sampling,
            "tasks": [
                {**task, "name": "gen", "scoring": {"scorer": "exact_match", "target_column": "a"}},
                {
                    **task,
                    "name": "mc",
                    "scoring": {"scorer": "multiple_choice", "choices_column": "c", "target_column": "a"},
                },
            ],
        },
        EvalConfig,
    )


def test_eval_refuses_n_above_one():
    with pytest.raises(ConfigError, match="sampling.n must be 1 in an eval job"):
        eval_config(2)


def test_eval_output_shares_the_generate_columns_and_types():
    n = 1  # the only n an eval job takes (above)
    cfg = eval_config(n)
    rows = [
        {"id": "gen/1", "task": "gen", "input": json.dumps({"q": "Hello", "a": "x"})},
        {"id": "mc/1", "task": "mc", "input": json.dumps({"q": "The sky is", "c": ["blue", "red"], "a": 0})},
    ]
    stage = EvalStage(cfg)
    try:
        out = stage(pa.Table.from_pylist(rows))
    finally:
        stage.engine.close()
    assert out.schema.names[: len(RESERVED_COLUMNS)] == list(RESERVED_COLUMNS)
    generate_types = {f.name: f.type for f in result_fields()}
    for name in OUTPUT_COLUMNS[1:]:
        assert out.schema.field(name).type == generate_types[name], name
    got = {r["id"]: r for r in out.to_pylist()}
    assert isinstance(got["gen/1"]["generation"], str) and got["gen/1"]["sampling_params"]["n"] == n
    assert (got["gen/1"]["samples"] is None) == (n == 1)
    assert got["mc/1"]["generation"] is None and got["mc/1"]["error"] is None


def documented_names() -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+)` \|", DOCS.read_text(), re.MULTILINE))


def test_docs_describe_every_column_and_field():
    names = documented_names()
    columns = {*OUTPUT_COLUMNS, *OPTIONAL_COLUMNS, "task", "target", "choice_logprobs"}
    fields = {f.name for f in SAMPLING_PARAMS} | {f.name for f in sample_type()}
    missing = sorted((columns | fields) - names)
    assert not missing, f"docs/outputs.md does not describe {missing}"
