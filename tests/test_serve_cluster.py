"""`runner serve` end to end: a local Ray cluster with its dashboard (token auth, as test_submit), the
server as its own process on 127.0.0.1, and the official `openai` client.

One batch runs to completion and its output equals `runner batch` on the same file; a long one is
cancelled mid-way (stops, partial output, true counts); a third survives a restart of the server
and completes once; another key sees none of them.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai
import pytest

from runner.orchestration import submit
from tests.test_submit import dashboard_missing, free_port, start_cluster, token_auth  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parent.parent
CONFIG = "configs/serve-demo.yaml"
ALICE, BOB = "alice-" + "a" * 26, "bob-" + "b" * 28


def chat(i: int, words: int = 2, max_tokens: int = 8) -> dict:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"Count {i} " * words}],
        "max_tokens": max_tokens,
    }
    return {"custom_id": f"req-{i:04d}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def base_model(request: dict) -> dict:
    """The same request naming the base model by its `model.path` instead of its served alias."""
    return request | {"body": request["body"] | {"model": "demo:tiny-llama"}}


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class ServerProcess:
    """`runner serve` in a subprocess (so a restart is a real one)."""

    def __init__(self, storage: Path, keys: Path, address: str):
        self.port = free_port()
        self.args = ["serve", "--storage", str(storage), "--config", CONFIG, "--address", address]
        self.args += ["--api-keys", str(keys), "--port", str(self.port), "--poll-seconds", "1"]
        self.proc = None

    def start(self) -> None:
        log = open(Path(self.args[2]).parent / "server.log", "a")  # noqa: SIM115 - the process's log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner", *self.args], cwd=REPO, stdout=log, stderr=log
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client(ALICE).models.list()
                return
            except openai.APIConnectionError:
                assert self.proc.poll() is None, "the server exited"
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.5)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def cluster():
    missing = dashboard_missing()
    if missing:
        pytest.skip(missing)
    # Its own Ray temp directory: the jobs' `ray.address=auto` finds this cluster, not the latest one
    # another process started on this machine.
    temp_dir = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
    handle, address = start_cluster([1], cpus=3, temp_dir=temp_dir)
    yield address
    handle.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def server(cluster, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"{ALICE} alice\n{BOB} bob\n")
    process = ServerProcess(tmp_path / "store", keys, cluster)
    process.start()
    yield process
    if process.proc.poll() is None:
        process.stop()


ENDED = ("completed", "failed", "cancelled", "expired")  # a batch in one of these never changes again


def wait_for(client, batch_id: str, done, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        assert batch.status not in ENDED, f"batch {batch_id} ended {batch.status}: {batch.errors}"
        assert time.monotonic() < deadline, f"batch {batch_id} stayed {batch.status}: {batch}"
        time.sleep(1)


def lines(text: str) -> dict[str, dict]:
    out = {}
    for raw in text.splitlines():
        line = json.loads(raw)
        assert line["custom_id"] not in out
        out[line["custom_id"]] = line
    return out


def answer(line: dict) -> tuple:
    """What must equal between two runs of one request: status, choices, usage, error (not ids or times)."""
    body = line["response"]["body"] if line["response"] else {}
    return (
        line["response"] and line["response"]["status_code"],
        body.get("choices"),
        body.get("usage"),
        line["error"],
    )


def test_batches_run_cancel_and_survive_a_restart_through_the_openai_client(server, cluster, tmp_path):
    alice, bob = server.client(ALICE), server.client(BOB)
    requests = [chat(i) for i in range(5)] + [base_model(chat(i)) for i in range(5, 8)]
    small = write(tmp_path / "small.jsonl", requests)
    long_file = write(tmp_path / "long.jsonl", [chat(i, words=20, max_tokens=16) for i in range(160)])

    # 1. upload, create, poll to completed, download: the output equals `runner batch` on the same file
    uploaded = alice.files.create(file=small.open("rb"), purpose="batch")
    first = alice.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert first.status == "validating"
    # 2. a long batch, cancelled once it has committed some requests
    long_upload = alice.files.create(file=long_file.open("rb"), purpose="batch")
    second = alice.batches.create(
        input_file_id=long_upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )

    with pytest.raises(openai.NotFoundError):
        bob.batches.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.cancel(second.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.content(uploaded.id)
    assert list(bob.batches.list()) == [] and {b.id for b in alice.batches.list()} == {first.id, second.id}
    with pytest.raises(openai.AuthenticationError):
        server.client("nobody-" + "x" * 20).batches.list()

    running = wait_for(alice, second.id, lambda b: b.request_counts.completed + b.request_counts.failed > 0)
    assert running.status == "in_progress" and running.request_counts.total == 160
    cancelling = alice.batches.cancel(second.id)
    assert cancelling.status == "cancelling"
    cancelled = wait_for(alice, second.id, lambda b: b.status == "cancelled")
    counts = cancelled.request_counts
    assert counts.total == 160 and 0 < counts.completed + counts.failed < 160, counts
    partial = lines(alice.files.content(cancelled.output_file_id).text)
    assert len(partial) == counts.completed
    time.sleep(3)  # stopped: nothing more is committed
    assert alice.batches.retrieve(second.id).request_counts == counts

    done = wait_for(alice, first.id, lambda b: b.status in ("completed", "failed", "cancelled", "expired"))
    assert done.status == "completed", done
    assert done.request_counts.total == 8 and done.request_counts.completed == 8 and done.completed_at
    assert done.error_file_id is None and done.finalizing_at and done.in_progress_at
    served = lines(alice.files.content(done.output_file_id).text)
    reference = tmp_path / "reference.jsonl"
    cli = subprocess.run(
        [sys.executable, "-m", "runner", "batch", "-i", str(small), "-o", str(reference), "--config", CONFIG,
         "--output", str(tmp_path / "reference.parts"), "--set", "ray.address=null"],
        cwd=REPO, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    expected = lines(reference.read_text())
    assert served.keys() == expected.keys() == {r["custom_id"] for r in requests}
    for custom_id, line in served.items():
        assert answer(line) == answer(expected[custom_id]), custom_id
    usages = [line["response"]["body"]["usage"] for line in served.values()]
    assert done.usage.output_tokens == sum(u["completion_tokens"] for u in usages)
    assert done.usage.total_tokens == sum(u["total_tokens"] for u in usages)

    # 3. a batch created just before the server is killed completes after its restart, once
    third = alice.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    server.stop()
    server.start()
    ended = wait_for(alice, third.id, lambda b: b.status in ("completed", "failed", "cancelled", "expired"))
    assert ended.status == "completed" and ended.request_counts.completed == 8
    attempts = submit.attempts_of(submit.connect(cluster), f"runner-{third.id}")
    assert len(attempts) == 1
    assert {b.id for b in alice.batches.list()} == {first.id, second.id, third.id}
    assert lines(alice.files.content(ended.output_file_id).text).keys() == served.keys()
