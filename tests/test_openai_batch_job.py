"""`runner batch` end to end, as a user runs it: a mixed OpenAI request file (chat + completions, per
request temperature / seed / n / stop / json_schema, two adapters by `model`, invalid requests) on a
local two-replica Ray, killed mid-way and run again: one output or error line per request, each valid
under the `openai` package's types, the texts those of the stage over the whole file at once, and the
greedy chat texts those of `runner run` over the same messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from jobs.openai_batch.config import BatchConfig
from jobs.openai_batch.responses import OutputLine
from jobs.openai_batch.stage import BatchStage
from runner.config import build_config
from tests.test_openai_batch_stage import request_rows

MODEL = "demo:tiny-llama"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
TOPICS = ["the sea", "a cat", "Paris", "prime numbers", "東京", "rain"]


def requests_file(path: Path) -> tuple[Path, list[str]]:
    """48 requests of every kind (and four that fail), plus a line that is not JSON."""
    lines = []
    for i in range(44):
        topic = TOPICS[i % len(TOPICS)]
        model = [MODEL, "a", "b", MODEL][i % 4]
        if i % 2 == 0:
            body = {"model": model, "messages": [{"role": "user", "content": f"Tell me about {topic} ({i})"}]}
            if i % 6 == 2:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "s", "schema": SCHEMA},
                }
            url = "/v1/chat/completions"
        else:
            body, url = {"model": model, "prompt": f"A story about {topic} ({i}):"}, "/v1/completions"
        if i % 5 == 1:
            body.update(temperature=0.8, seed=i, n=2)
        if i % 7 == 3:
            body["stop"] = ["e"]
        body["max_tokens"] = 6 + i % 5
        lines.append({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body})
    bad = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    lines += [
        {"custom_id": "tools", "method": "POST", "url": "/v1/chat/completions", "body": {**bad, "tools": []}},
        {
            "custom_id": "nomodel",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {**bad, "model": "gpt-4o"},
        },
        {"custom_id": "zero-n", "method": "POST", "url": "/v1/chat/completions", "body": {**bad, "n": 0}},
        {"custom_id": "req-0", "method": "POST", "url": "/v1/chat/completions", "body": bad},  # repeated id
    ]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines) + "{not json\n"
    path.write_text(text, encoding="utf-8")
    return path, [r["custom_id"] for r in lines[:-1]] + ["input-error-row-00000048"]  # the repeat: no line


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    from tests.test_generation_features import make_adapter

    root = tmp_path_factory.mktemp("batchjob")
    adapters = {name: make_adapter(tiny_model, root / name, seed) for name, seed in (("a", 1), ("b", 2))}
    source, ids = requests_file(root / "requests.jsonl")
    settings = {
        "model": {"path": MODEL, "dtype": "float32", "adapters": adapters},
        "batch": {
            "input": str(source),
            "output_file": str(root / "out.jsonl"),
            "error_file": str(root / "err.jsonl"),
        },
        "sampling": {"max_new_tokens": 8},
        "batching": {"rows_per_task": 4, "token_budget": 2048},
        "placement": {"replicas": 2},
        "output": {"rows_per_file": 4, "path": str(root / "parts")},
        "ray": {"num_cpus": 2, "num_gpus": 0},
    }
    config = root / "job.yaml"
    config.write_text(json.dumps(settings))  # JSON is YAML
    return root, config, settings, ids


def start(config: Path) -> subprocess.Popen:
    with open(config.parent / "stderr.txt", "w") as stderr:
        command = [sys.executable, "-m", "runner", "batch", str(config)]
        return subprocess.Popen(
            command, cwd=config.parent, stderr=stderr, stdout=subprocess.DEVNULL, start_new_session=True
        )


def lines_of(path: Path) -> list[dict]:
    return [json.loads(t) for t in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def valid(line: dict, url_of: dict) -> dict:
    OutputLine.model_validate(line)
    body = line["response"]["body"]
    if line["response"]["status_code"] == 200:
        kind = ChatCompletion if url_of[line["custom_id"]] == "/v1/chat/completions" else Completion
        assert kind.model_validate(body).model_dump(mode="json", exclude_unset=True) == body
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}
    return line


@pytest.mark.slow
@pytest.mark.timeout(1200)  # two jobs and a `runner run`, each starting its own Ray
def test_killed_batch_resumes_to_one_line_per_request(setup, tiny_model):
    root, config, settings, ids = setup
    proc = start(config)
    try:
        deadline = time.monotonic() + 300
        while not (root / "parts" / "part-00000.parquet").exists():
            assert proc.poll() is None, (root / "stderr.txt").read_text()
            assert time.monotonic() < deadline, "no part committed in time"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not (root / "out.jsonl").exists(), "killed before the end: no results file yet"
    done = subprocess.run(
        [sys.executable, "-m", "runner", "batch", str(config)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    requests = [json.loads(t) for t in (root / "requests.jsonl").read_text().splitlines()[:-1]]
    url_of = {r["custom_id"]: r["url"] for r in requests}
    url_of["input-error-row-00000048"] = None
    out, err = lines_of(root / "out.jsonl"), lines_of(root / "err.jsonl")
    assert sorted(line["custom_id"] for line in out + err) == sorted(ids), "one line per request"
    for line in out + err:
        valid(line, url_of)
    assert {line["custom_id"] for line in err} == {
        "tools",
        "nomodel",
        "zero-n",
        "input-error-row-00000048",
    }
    assert [line["custom_id"] for line in out] == [i for i in ids if i.startswith("req-")][:44]  # input order
    summary = json.loads((root / "parts" / "_job.json").read_text())
    assert summary["request_counts"] == {"total": 49, "completed": 44, "failed": 4}  # a repeated id
    assert summary["rows_skipped_already_done"] > 0, "the rerun resumed"

    # The whole file through the stage at once, in this process: the same texts.
    cfg = build_config({**settings, "model": {**settings["model"], "path": tiny_model}}, kind=BatchConfig)
    cfg.batch.served_model_name.append(MODEL)
    rows = BatchStage(cfg)(request_rows(requests[:44])).to_pylist()
    want = {r["id"]: r for r in rows}
    for line in out:
        choices = line["response"]["body"]["choices"]
        texts = [c["message"]["content"] if "message" in c else c["text"] for c in choices]
        assert texts == [s["text"] for s in want[line["custom_id"]]["samples"]], line["custom_id"]

    # Greedy chat requests of the base model: the texts of `runner run` over the same messages.
    greedy = [
        r for r in requests[:44]
        if r["url"] == "/v1/chat/completions" and r["body"]["model"] == MODEL and "temperature" not in r["body"]
        and "response_format" not in r["body"] and "stop" not in r["body"]
    ]  # fmt: skip
    data = root / "chat.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {"key": r["custom_id"], "messages": r["body"]["messages"], "limit": r["body"]["max_tokens"]}
            )
            + "\n"
            for r in greedy
        )
    )
    run_config = root / "run.yaml"
    run_config.write_text(
        json.dumps(
            {
                "model": {"path": MODEL, "dtype": "float32"},
                "data": {
                    "source": str(data),
                    "id_column": "key",
                    "prompt": {"messages_column": "messages"},
                    "max_new_tokens_column": "limit",
                },
                "output": {"path": str(root / "run")},
                "ray": {"num_cpus": 2, "num_gpus": 0},
            }
        )
    )
    ran = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(run_config)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr
    expected = {r["id"]: r["generation"] for r in pq.read_table(root / "run").to_pylist()}
    chat = [line for line in out if line["response"]["body"]["object"] == "chat.completion"]
    got = {line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"] for line in chat}
    assert len(greedy) >= 4 and {k: got[k] for k in expected} == expected
