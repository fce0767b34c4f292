"""`runner batch`'s command line and config: the short options, the command a server submits
(`batch_argv`), paths relative to a config file, `runner submit --kind batch`, `runner export`'s
refusals. No model, no Ray."""

from __future__ import annotations

import json
import shlex

import pytest

from jobs.openai_batch import cli as batch_cli
from jobs.openai_batch.command import batch_argv
from jobs.openai_batch.config import BatchConfig, default_job_dir
from runner.cli import build_parser, main, options
from runner.config import load_config
from runner.errors import ConfigError
from runner.orchestration import submit


def parsed_config(argv: list[str]) -> BatchConfig:
    args = build_parser().parse_args(argv)
    config = args.config or args.config_option
    return load_config(config, batch_cli.flag_overrides(args) + options.overrides(args), kind=BatchConfig)


def test_batch_argv_is_a_runner_batch_command_line(tmp_path):
    argv = batch_argv(
        "s3://b/in.jsonl", "s3://b/out.jsonl", "s3://b/err.jsonl", "s3://b/job", "org/model: v2",
        order="any", overrides=["sampling.max_new_tokens=32", "placement.replicas=4"],
    )  # fmt: skip
    assert argv[:4] == ["python", "-m", "runner", "batch"]
    cfg = parsed_config(argv[3:])
    assert (cfg.batch.input, cfg.batch.output_file, cfg.batch.error_file) == (
        "s3://b/in.jsonl",
        "s3://b/out.jsonl",
        "s3://b/err.jsonl",
    )
    assert cfg.output.path == "s3://b/job" and cfg.model.path == "org/model: v2" and cfg.batch.order == "any"
    assert cfg.sampling.max_new_tokens == 32 and cfg.placement.replicas == 4
    assert cfg.data.source == "s3://b/in.jsonl" and cfg.data.id_column == "custom_id"
    no_errors = parsed_config(batch_argv("in.jsonl", "out.jsonl", None, "job", "m")[3:])
    assert no_errors.batch.error_file is None


def test_short_form_defaults_and_config_file(tmp_path):
    cfg = parsed_config(["batch", "-i", "req.jsonl", "-o", "res.jsonl", "--model", "demo:tiny-llama"])
    assert cfg.output.path == default_job_dir("res.jsonl") == "res.parts" and cfg.batch.order == "input"
    (tmp_path / "sub").mkdir()
    job = tmp_path / "sub" / "job.yaml"
    job.write_text(
        json.dumps(
            {"model": {"path": "demo:tiny-llama"}, "batch": {"input": "r.jsonl", "output_file": "o.jsonl"}}
        )
    )
    from_file = parsed_config(["batch", "--config", str(job)])
    assert from_file.batch.input == str(tmp_path / "sub" / "r.jsonl")  # relative to the config file
    assert from_file.output.path == str(tmp_path / "sub" / "o.parts")
    overridden = parsed_config(["batch", str(job), "-o", "/x/y.jsonl", "--output", "/x/parts"])
    assert overridden.batch.output_file == "/x/y.jsonl" and overridden.output.path == "/x/parts"


def test_data_is_the_request_file():
    with pytest.raises(ConfigError, match=r"data: a batch job reads batch.input"):
        parsed_config(
            ["batch", "-i", "a.jsonl", "-o", "b.jsonl", "--model", "m", "--set", "data.source=c.jsonl"]
        )
    with pytest.raises(ConfigError, match=r"batch"):
        parsed_config(["batch", "--model", "m"])


def test_submit_kind_batch_runs_runner_batch_with_the_config(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        json.dumps(
            {"model": {"path": "m"}, "batch": {"input": "s3://b/in.jsonl", "output_file": "s3://b/o.jsonl"}}
        )
    )
    cfg = load_config(str(job), ["output.path=s3://b/parts"], kind=BatchConfig)
    sub = submit.plan(
        str(job), cfg, ["--set", "output.path=s3://b/parts"], "batch", working_dir=str(tmp_path)
    )
    assert shlex.split(sub.entrypoint)[:5] == ["python", "-m", "runner", "batch", "job.yaml"]
    args = build_parser().parse_args(["submit", str(job), "--kind", "batch"])
    assert args.kind == "batch"


def test_export_refuses_a_directory_that_is_not_a_batch_job(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "is not a batch job's directory (no _job.json)" in capsys.readouterr().err
    (tmp_path / "_job.json").write_text(json.dumps({"kind": "eval", "config": {}}))
    assert main(["export", str(tmp_path)]) == 2
    assert "(kind eval)" in capsys.readouterr().err
