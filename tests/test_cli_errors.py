"""Bad configs, inputs and output paths fail fast through the real CLI: exit 2, one line naming the
field, no traceback (unless --debug), and no model loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import write_jsonl

CASES = {  # id: (config changes, what the error line says)
    "unknown key": ({"model": {"pth": "x"}}, "error: model.pth: unknown key"),
    "wrong type": ({"sampling": {"max_new_tokens": "many"}}, "error: sampling.max_new_tokens: "),
    "max_memory size": (
        {"placement": {"max_memory": {"0": "20 gigs"}}},
        "error: placement.max_memory: unreadable size '20 gigs': use e.g. 20GiB",
    ),
    "missing input path": ({"data": {"source": "{tmp}/nope.jsonl"}}, "error: data.source: no such file"),
    "missing input column": (
        {"data": {"prompt": {"column": "text"}}},
        "error: data.prompt.column: column 'text' not in input (columns: id, prompt)",
    ),
    "output is a file": ({"output": {"path": "{tmp}/a-file"}}, "error: output.path: {tmp}/a-file is a file"),
    "output not writable": (
        {"output": {"path": "/proc/runner-out"}},
        "error: output.path: /proc/runner-out is not writable",
    ),
    "output holds foreign parts": (
        {"output": {"path": "{tmp}/theirs"}},
        "error: output.path: {tmp}/theirs holds part files but no _job.json",
    ),
    "FA2 demanded on a CPU machine": (
        {"model": {"attention": "flash_attention_2"}},
        "error: model.attention: flash_attention_2 cannot run here: ",
    ),
    "impossible placement": (
        {"placement": {"gpus_per_replica": 2}, "ray": {"num_gpus": 1, "num_cpus": 1}},
        "error: placement.gpus_per_replica: 2 GPUs per replica, but the largest node has 1",
    ),
}


def merge(tree: dict, changes: dict) -> dict:
    for key, value in changes.items():
        tree[key] = merge(tree.get(key, {}), value) if isinstance(value, dict) else value
    return tree


def write_config(tmp_path, changes: dict) -> str:
    source = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Hello"}])
    (tmp_path / "a-file").write_text("not a directory")
    tree = {
        "model": {"path": "demo:tiny-llama"},
        "data": {"source": str(source)},
        "output": {"path": str(tmp_path / "out")},
    }
    text = json.dumps(merge(tree, changes)).replace("{tmp}", str(tmp_path))
    (tmp_path / "job.yaml").write_text(text)  # JSON is YAML
    return str(tmp_path / "job.yaml")


def run_cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    # An empty model cache: a model built or loaded would show up in it.
    env = {**os.environ, "RUNNER_CACHE": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "runner", "run", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_fails_fast_with_one_line_and_exit_2(case, tmp_path):
    changes, expected = CASES[case]
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "part-00000.parquet").write_text("someone else's")
    result = run_cli(tmp_path, write_config(tmp_path, changes))

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(expected.replace("{tmp}", str(tmp_path))), result.stderr
    assert not (tmp_path / "cache").exists(), "no model was built or loaded"
    if case != "impossible placement":  # the only check that needs the cluster (how many GPUs)
        assert result.stderr.splitlines() == errors, "nothing but the error line"
    assert (foreign / "part-00000.parquet").read_text() == "someone else's"


def test_debug_shows_the_traceback(tmp_path):
    config = write_config(tmp_path, CASES["unknown key"][0])
    result = run_cli(tmp_path, config, "--debug")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "model.pth: unknown key" in result.stderr
