"""Bad input never fails a job: each bad row becomes that row's error row (or a correct value).

The stage runs in this process over what the reader produced, on the real tiny model: what a replica
would do with the same batch.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.generate.prompts import PromptBuilder
from jobs.generate.row_options import RowOptions
from jobs.generate.stage import GenerationStage
from runner.config import PromptConfig, build_config
from runner.engine import Request
from runner.errors import ConfigError
from runner.io.inputs import read_input, template_variables


def config(source, **data):
    return build_config(
        {
            "model": {"path": "demo:tiny-llama", "dtype": "float32"},
            "data": {"source": str(source), **data},
            "sampling": {"max_new_tokens": 4},
            "batching": {"max_batch_size": 4},
        }
    )


@pytest.fixture(scope="module")
def stage(tiny_model) -> GenerationStage:
    return GenerationStage(config("unused.jsonl"))


def run_stage(stage: GenerationStage, cfg, table: pa.Table) -> dict[str, dict]:
    stage.cfg, stage.prompts = cfg, PromptBuilder(cfg.data.prompt, stage.engine.tokenizer)
    stage.options = RowOptions(cfg)
    return {row["id"]: row for row in stage(table).to_pylist()}


def test_malformed_jsonl_lines_and_a_column_that_changes_type_become_error_rows(stage, tmp_path):
    lines = [
        json.dumps({"prompt": "Hello", "limit": 3}),
        json.dumps({"prompt": "What is the capital of France?", "limit": "lots"}),  # number, then text
        '{"prompt": "broken',
        json.dumps({"prompt": "x", "limit": 2}),
        json.dumps(["not", "an", "object"]),
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    cfg = config(tmp_path / "in.jsonl", max_new_tokens_column="limit")
    out = run_stage(stage, cfg, read_input(cfg.data))
    assert list(out) == ["00000000", "00000001", "00000002", "00000003", "00000004"]  # line positions
    assert out["00000001"]["error"] == "column 'limit' is str 'lots', other rows hold number"
    assert out["00000002"]["error"].startswith("in.jsonl line 3: not a JSON object")
    assert out["00000004"]["error"].startswith("in.jsonl line 5: not a JSON object")
    for bad in ("00000001", "00000002", "00000004"):
        assert out[bad]["finish_reason"] == "error" and out[bad]["error_kind"] == "row"
    assert out["00000000"]["error"] is None and out["00000000"]["completion_tokens"] <= 3
    assert out["00000003"]["error"] is None and out["00000003"]["completion_tokens"] <= 2


def test_invalid_utf8_in_a_parquet_string_is_that_rows_error(stage, tmp_path):
    prompts = pa.array([b"Hello", b"bad \xff\xfe bytes", b"x"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"prompt": prompts}), tmp_path / "in.parquet")
    cfg = config(tmp_path / "in.parquet")
    out = run_stage(stage, cfg, read_input(cfg.data))
    assert out["00000001"]["error"] == "column 'prompt': invalid data"
    assert out["00000000"]["error"] is None and out["00000002"]["error"] is None


def test_csv_ids_and_values_stay_the_text_they_are(stage, tmp_path):
    (tmp_path / "in.csv").write_text("key,prompt,limit\n007,Hello,3\nNA,x,2\n1e3,What,4\n")
    cfg = config(tmp_path / "in.csv", id_column="key", max_new_tokens_column="limit")
    table = read_input(cfg.data)
    assert table.column("id").to_pylist() == ["007", "NA", "1e3"]
    out = run_stage(stage, cfg, table)
    assert [r["error"] for r in out.values()] == [None, None, None]  # "3" is a max_new_tokens of 3
    assert out["007"]["completion_tokens"] <= 3


def test_a_template_that_raises_and_a_column_named_self(stage, tmp_path):
    rows = [{"self": "me", "q": "Hello", "n": 1}, {"self": "me", "q": "Hello", "n": 0}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(tmp_path / "in.jsonl", prompt={"template": "{{ q }} {{ 10 // n }} {{ q.no_such() }}"})
    out = run_stage(stage, cfg, read_input(cfg.data))
    assert out["00000000"]["error"].startswith("prompt: UndefinedError")
    assert out["00000001"]["error"] == "prompt: ZeroDivisionError: integer division or modulo by zero"
    cfg = config(tmp_path / "in.jsonl", prompt={"template": "{{ q }} ({{ n }})"}, carry_columns=["self"])
    out = run_stage(stage, cfg, read_input(cfg.data))
    assert [r["prompt"] for r in out.values()] == ["Hello (1)", "Hello (0)"]
    assert [r["self"] for r in out.values()] == ["me", "me"]


PAYLOAD = "{{ cycler.__init__.__globals__.os.getcwd() }}"


def test_templates_render_in_a_sandbox(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.prompt\.template: access to '__\w+__' .*sandbox"):
        template_variables(PAYLOAD)
    with pytest.raises(ConfigError, match=r"^data\.prompt\.template:"):
        PromptBuilder(PromptConfig(template=PAYLOAD))
    # Reached without a literal underscore name: the sandbox refuses it when the row renders.
    builder = PromptBuilder(PromptConfig(template="{{ (n | attr(a)) }}"))
    refused = builder.build({"n": 1, "a": "__class__"})
    assert refused.reason.startswith("data.prompt.template: refused by the sandbox")


def test_a_batch_that_fails_is_bisected_to_the_row_that_causes_it(stage):
    vocab = stage.engine.model.config.vocab_size
    requests = [Request(f"r{i}", [1, 5, 7 + i], 4) for i in range(6)]
    poison = Request("r3", [1, vocab + 10, 7], 4)  # a token the model's embedding does not have
    done, isolated = {}, set()
    stage._generate([*requests[:3], poison, *requests[4:]], done, isolated)
    assert isolated == {"r3"} and done["r3"].error.startswith("engine: IndexError")
    clean = {c.id: c.texts for c in stage.engine.generate([r for r in requests if r.id != "r3"])}
    assert {k: v.texts for k, v in done.items() if k != "r3"} == clean  # the others generated, unchanged
