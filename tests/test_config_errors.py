"""Config errors name the key, all at once; `--set` values that are not YAML are text; relative paths
in a config file are relative to the file, in `--set` to the working directory."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from jobs.eval.config import EvalConfig
from runner.config import build_config, load_config
from runner.errors import ConfigError

BASE = ["model.path=demo:tiny-llama", "data.source=x.jsonl"]


@pytest.mark.parametrize(
    ("value", "template"),
    [
        ("{{ x }}", "{{ x }}"),
        ("Q: {q}", "Q: {q}"),
        ("[a", "[a"),
        ("Answer: {{ question }}", "Answer: {{ question }}"),
    ],
)
def test_a_set_value_that_is_not_yaml_or_not_text_where_text_is_wanted_is_the_text_typed(value, template):
    cfg = load_config(None, [*BASE, f"data.prompt.template={value}"])
    assert cfg.data.prompt.template == template


def test_a_set_value_that_is_not_yaml_for_a_list_names_the_key():
    with pytest.raises(ConfigError, match=r"^sampling.stop: Input should be a valid list \(got '\[a'\)$"):
        load_config(None, [*BASE, "sampling.stop=[a"])
    assert load_config(None, [*BASE, "sampling.stop=[a, b]"]).sampling.stop == ["a", "b"]


def test_every_problem_is_reported_at_once_with_the_nearest_key():
    tree = {
        "model": {"path": "x", "pth": "y"},
        "data": {"source": "x", "prompt": {"colum": "q"}},
        "sampling": {"max_tokens": 3, "temperature": "hot"},
        "output": {"zzz": 1},
    }
    with pytest.raises(ConfigError) as err:
        build_config(tree)
    assert str(err.value).splitlines() == [
        "model.pth: unknown key; did you mean path?",
        "data.prompt.colum: unknown key; did you mean column?",
        "sampling.temperature: Input should be a valid number, unable to parse string as a number (got 'hot')",
        "sampling.max_tokens: unknown key; did you mean max_new_tokens?",
        "output.zzz: unknown key (valid: " + ", ".join(build_config(BASE_TREE).output.model_fields) + ")",
    ]


BASE_TREE = {"model": {"path": "x"}, "data": {"source": "x"}}


def test_suggestions_follow_lists_and_optional_sections():
    tree = {
        "model": {"path": "x"},
        "tasks": [
            {"name": "a", "data": {"soruce": "x"}, "scoring": {"scorer": "exact_match", "target_colum": "t"}}
        ],
    }
    with pytest.raises(ConfigError) as err:
        build_config(tree, EvalConfig)
    lines = str(err.value).splitlines()
    assert "tasks.0.data.source: required field is missing" in lines
    assert "tasks.0.data.soruce: unknown key; did you mean source?" in lines
    assert "tasks.0.scoring.target_colum: unknown key; did you mean target_column?" in lines
    assert len(lines) == 3


def test_a_union_field_is_reported_once_under_its_own_key():
    with pytest.raises(ConfigError) as err:
        build_config({**BASE_TREE, "sampling": {"stop": 3, "max_new_tokens": 0}})
    lines = str(err.value).splitlines()
    assert [line.split(":")[0] for line in lines] == ["sampling.max_new_tokens", "sampling.stop"]


def run_cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RUNNER_CACHE": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "runner", "run", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_the_cli_prints_every_problem_one_line_each_and_exits_2(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(
        json.dumps({"model": {"pth": "x"}, "data": {"source": "in.jsonl"}, "sampling": {"max_tokens": 3}})
    )
    result = run_cli(tmp_path, str(config), "--set", "sampling.stop=[a")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "error: model.path: required field is missing",
        "error: model.pth: unknown key; did you mean path?",
        "error: sampling.stop: Input should be a valid list (got '[a')",
        "error: sampling.max_tokens: unknown key; did you mean max_new_tokens?",
    ]


def test_relative_paths_in_a_config_are_relative_to_its_directory(tmp_path, monkeypatch):
    job = tmp_path / "job"
    (job / "model").mkdir(parents=True)
    (job / "chat.jsonl").write_text('{"prompt": "p"}\n')
    (job / "job.yaml").write_text(
        "model: {path: model, adapters: {a: ./lora}}\ndata: {source: chat.jsonl}\noutput: {path: out}\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config("job/job.yaml")
    assert cfg.data.source == "job/chat.jsonl" and cfg.model.path == "job/model"
    assert cfg.output.path == "job/out" and cfg.model.adapters == {"a": "job/lora"}
    assert load_config(job / "job.yaml").data.source == "job/chat.jsonl"
    monkeypatch.chdir(job)
    assert load_config("job.yaml").data.source == "chat.jsonl"  # unchanged from the config's own directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_config(job / "job.yaml").data.source == str(job / "chat.jsonl")  # outside the cwd: absolute


def test_set_values_stay_relative_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "job.yaml").write_text("model: {path: demo:tiny-llama}\ndata: {source: chat.jsonl}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("job/job.yaml", ["data.source=mine.jsonl", "output.path=out"])
    assert cfg.data.source == "mine.jsonl" and cfg.output.path == "out"


def test_hub_ids_uris_and_absolute_paths_are_kept(tmp_path, monkeypatch):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "job.yaml").write_text(
        "model: {path: meta-llama/Llama-3.1-8B}\ndata: {source: org/dataset}\noutput: {path: s3://b/out}\n"
    )
    (tmp_path / "job" / "eval.yaml").write_text(
        "model: {path: demo:tiny-llama}\n"
        "tasks: [{name: t, data: {source: /abs/x.jsonl}, scoring: {scorer: exact_match, target_column: a}}]\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config("job/job.yaml")
    assert (cfg.model.path, cfg.data.source, cfg.output.path) == (
        "meta-llama/Llama-3.1-8B",
        "org/dataset",
        "s3://b/out",
    )
    cfg = load_config("job/eval.yaml", kind=EvalConfig)
    assert cfg.model.path == "demo:tiny-llama" and cfg.tasks[0].data.source == "/abs/x.jsonl"


def test_a_missing_input_file_is_named_where_it_was_looked_for(tmp_path, monkeypatch):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "job.yaml").write_text(
        "model: {path: demo:tiny-llama}\n"
        "tasks: [{name: t, data: {source: qa.jsonl}, scoring: {scorer: exact_match, target_column: a}}]\n"
    )
    monkeypatch.chdir(tmp_path)
    assert load_config("job/job.yaml", kind=EvalConfig).tasks[0].data.source == "job/qa.jsonl"


def test_a_config_written_for_the_working_directory_still_runs_with_a_warning(tmp_path, monkeypatch, caplog):
    (tmp_path / "configs").mkdir()
    (tmp_path / "data.jsonl").write_text('{"prompt": "p"}\n')
    (tmp_path / "configs" / "job.yaml").write_text(
        "model: {path: demo:tiny-llama}\ndata: {source: data.jsonl}\n"
    )
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        cfg = load_config("configs/job.yaml")
    assert cfg.data.source == "data.jsonl"
    assert "data.source: data.jsonl is not next to the config" in caplog.text
    assert "write it as ../data.jsonl" in caplog.text


def test_a_schema_file_and_batch_files_are_relative_to_the_config_inline_text_is_not(tmp_path, monkeypatch):
    from jobs.openai_batch.config import BatchConfig

    job = tmp_path / "job"
    job.mkdir()
    (job / "schema.json").write_text('{"type": "object", "properties": {"a": {"type": "string"}}}')
    (job / "requests.jsonl").write_text("")
    (job / "job.yaml").write_text(
        "model: {path: demo:tiny-llama}\ndata: {source: x.jsonl}\nsampling: {json_schema: schema.json}\n"
    )
    (job / "inline.yaml").write_text(
        "model: {path: demo:tiny-llama}\ndata: {source: x.jsonl}\n"
        'sampling: {json_schema: \'{"type": "object"}\'}\n'
    )
    (job / "batch.yaml").write_text(
        "model: {path: demo:tiny-llama}\nbatch: {input: requests.jsonl, output_file: out/results.jsonl}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert '"a"' in load_config("job/job.yaml").sampling.json_schema
    assert load_config("job/inline.yaml").sampling.json_schema == '{"type": "object"}'
    batch = load_config("job/batch.yaml", kind=BatchConfig).batch
    assert (batch.input, batch.output_file) == ("job/requests.jsonl", "job/out/results.jsonl")
