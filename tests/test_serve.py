"""`runner serve`'s API without a cluster: keys, ownership, ids, limits, the Files API, batch records
and their lifecycle on the storage, driven with the official `openai` client over FastAPI's TestClient.

The runs themselves (a Ray cluster, jobs, cancel, restart) are test_serve_cluster.py's.
"""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient

from jobs.openai_batch.server.advance import Advancer, scan
from jobs.openai_batch.server.app import create_app
from jobs.openai_batch.server.auth import ENV_VAR, load_keys, parse_keys
from jobs.openai_batch.server.batches import Batches
from jobs.openai_batch.server.files import Files, Limits
from jobs.openai_batch.server.lifecycle import LIVE_JOB, State, batch_object, next_step
from jobs.openai_batch.server.models import Models
from jobs.openai_batch.server.storage import Store, new_id
from runner.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
ALICE, BOB, ROOT = "a" * 32, "b" * 32, "r" * 32
KEYS = f"{ALICE} alice\n{BOB} bob  # a comment\n{ROOT} ops admin\n"
MODEL = "demo:tiny-llama"


def request_line(i: int, model: str = MODEL) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": f"Say {i}."}], "max_tokens": 4}
    return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


class Server:
    """The app over a storage directory, and an `openai` client per key."""

    def __init__(self, storage: Path, limits: Limits = Limits()):
        self.store = Store(str(storage))
        self.files = Files(self.store, limits)
        self.batches = Batches(self.store, self.files)
        self.models = Models([str(REPO / "configs/serve-demo.yaml")])
        self.app = create_app(parse_keys(KEYS, "keys"), self.files, self.batches, self.models)
        self.http = TestClient(self.app)

    def client(self, key: str | None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url="http://testserver/v1", api_key=key or "none", http_client=self.http, max_retries=0
        )

    def advancer(self) -> Advancer:
        return Advancer(self.batches, self.models, runs=None, max_requests=100)


@pytest.fixture
def server(tmp_path) -> Server:
    return Server(tmp_path / "store")


def upload(client: openai.OpenAI, rows: list[dict]):
    return client.files.create(file=("requests.jsonl", jsonl(rows)), purpose="batch")


# keys


def test_keys_file_owners_admin_and_one_line_errors(tmp_path, monkeypatch):
    keys = parse_keys(KEYS, "keys")
    assert len(keys) == 3
    assert keys.authenticate(f"Bearer {ALICE}").owner == "alice"
    assert keys.authenticate(f"bearer {ROOT}").admin
    for header in (None, "", "Bearer", f"Basic {ALICE}", f"Bearer {ALICE}x", "Bearer " + "c" * 32):
        assert keys.authenticate(header) is None
    for text, message in [
        ("short alice\n", "line 1: the key is shorter than 16"),
        (f"{ALICE}\n", "line 1: expected `KEY OWNER \\[admin\\]`"),
        (f"{ALICE} alice root\n", "line 1: expected"),
        (f"{ALICE} alice\n{ALICE} bob\n", "line 2: the key is listed twice"),
        ("# nothing\n", "no keys"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_keys(text, "keys")
    monkeypatch.setenv(ENV_VAR, f"{BOB} bob")
    assert load_keys(None).authenticate(f"Bearer {BOB}").owner == "bob"
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(ConfigError, match="never runs without keys"):
        load_keys(None)
    with pytest.raises(ConfigError, match="file not found"):
        load_keys(str(tmp_path / "nope"))


def test_no_key_or_a_wrong_key_is_401_in_openai_shape(server):
    for key in (None, "x" * 32):
        with pytest.raises(openai.AuthenticationError) as err:
            server.client(key).batches.list()
        assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    raw = server.http.get("/v1/files")
    assert raw.status_code == 401 and set(raw.json()["error"]) == {"message", "type", "param", "code"}


# ids and limits


@pytest.mark.parametrize(
    "bad_id",
    [
        "../../etc/passwd",
        "file-../../batches",
        "file-" + "0" * 31 + "/",
        "file-" + "A" * 32,
        "batch_" + "0" * 32,
    ],
)
def test_a_path_traversal_or_malformed_id_is_refused_before_any_path_is_built(server, bad_id):
    client = server.client(ALICE)
    for call in (
        client.files.retrieve,
        client.files.content,
        client.files.delete,
        client.batches.retrieve,
        client.batches.cancel,
    ):
        with pytest.raises(openai.NotFoundError):
            call(bad_id)
    # What the client itself refuses to send (dot segments), sent raw.
    for path in (
        "/v1/files/..%2F..%2Fetc%2Fpasswd/content",
        "/v1/files/%2e%2e/content",
        "/v1/batches/..%2Fbatch.json",
        "/v1/files/../../etc/passwd",
    ):
        assert server.http.get(path, headers={"Authorization": f"Bearer {ALICE}"}).status_code == 404


def test_an_oversized_upload_is_refused_and_nothing_is_kept(tmp_path):
    server = Server(tmp_path / "store", Limits(max_file_bytes=2000, max_requests=100))
    rows = [request_line(i) for i in range(40)]
    with pytest.raises(openai.APIStatusError) as err:
        upload(server.client(ALICE), rows)
    assert err.value.status_code == 413 and "limit of" in err.value.message
    assert server.store.children("files") == []
    # Without a Content-Length (a chunked body) the bytes are counted as they come.
    head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
    body = head + jsonl(rows * 20) + b"\r\n--x--\r\n"  # past the limit and the multipart slack
    stream = iter([body[i : i + 4096] for i in range(0, len(body), 4096)])
    raw = server.http.post(
        "/v1/files",
        content=stream,
        headers={"Authorization": f"Bearer {ALICE}", "Content-Type": "multipart/form-data; boundary=x"},
    )
    assert raw.status_code == 413 and raw.json()["error"]["code"] is not None


def test_ids_are_random_and_unguessable():
    ids = {new_id("file") for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 5 + 32 for i in ids)


# files


def test_files_are_uploaded_listed_downloaded_and_deleted_per_owner(server):
    alice, bob, ops = server.client(ALICE), server.client(BOB), server.client(ROOT)
    rows = [request_line(i) for i in range(3)]
    file = upload(alice, rows)
    assert file.purpose == "batch" and file.bytes == len(jsonl(rows)) and file.filename == "requests.jsonl"
    assert alice.files.retrieve(file.id) == file
    assert alice.files.content(file.id).read() == jsonl(rows)
    assert [f.id for f in alice.files.list()] == [file.id]
    assert list(bob.files.list()) == []
    for call in (bob.files.retrieve, bob.files.content, bob.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(file.id)
    assert [f.id for f in ops.files.list()] == [file.id]  # admin
    assert alice.files.delete(file.id).deleted
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(file.id)
    assert server.store.children("files") == []


def test_an_upload_is_validated_line_by_line(server):
    alice = server.client(ALICE)
    bad = jsonl([request_line(0)]) + b"{not json\n"
    with pytest.raises(openai.BadRequestError) as err:
        alice.files.create(file=("bad.jsonl", bad), purpose="batch")
    assert "line 2" in err.value.message
    with pytest.raises(openai.BadRequestError, match="purpose"):
        alice.files.create(file=("x.jsonl", jsonl([request_line(0)])), purpose="fine-tune")
    assert server.store.children("files") == []


def test_file_pages_follow_the_cursor(server):
    alice = server.client(ALICE)
    ids = [upload(alice, [request_line(i)]).id for i in range(5)]
    first = alice.files.list(limit=2, order="asc")
    assert [f.id for f in first.data] == ids[:2] and first.has_more
    assert [f.id for f in alice.files.list(limit=2, order="asc")] == ids  # the client follows the pages
    assert [f.id for f in alice.files.list()] == ids[::-1]  # newest first by default


# batches and their lifecycle (no cluster: validation, cancel before the job, the record on storage)


def test_models_lists_the_served_names(server):
    alice = server.client(ALICE)
    assert [m.id for m in alice.models.list()] == [MODEL, "tiny"]  # model.path, batch.served_model_name
    assert alice.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        alice.models.retrieve("gpt-4o")


def test_create_checks_endpoint_window_and_file_owner(server):
    alice, bob = server.client(ALICE), server.client(BOB)
    file = upload(alice, [request_line(0)])
    good = {"input_file_id": file.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        alice.batches.create(**(good | {"endpoint": "/v1/embeddings"}))
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        alice.batches.create(**(good | {"completion_window": "1h"}))
    with pytest.raises(openai.NotFoundError):
        bob.batches.create(**good)
    batch = alice.batches.create(**good, metadata={"team": "nlp"})
    assert (
        batch.status == "validating" and batch.metadata == {"team": "nlp"} and batch.input_file_id == file.id
    )
    assert batch.expires_at == batch.created_at + 24 * 3600
    assert [b.id for b in alice.batches.list()] == [batch.id]
    assert list(bob.batches.list()) == []
    with pytest.raises(openai.NotFoundError):
        bob.batches.cancel(batch.id)
    assert [b.id for b in server.client(ROOT).batches.list()] == [batch.id]


def test_a_request_for_a_model_not_served_fails_the_batch_with_openai_errors(server):
    alice = server.client(ALICE)
    file = upload(alice, [request_line(0, model="gpt-4o"), request_line(1)])
    batch = alice.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    advancer = server.advancer()
    advancer.step(server.batches.load(batch.id), (None, None), now=batch.created_at)  # validate
    advancer.step(server.batches.load(batch.id), (None, None), now=batch.created_at)  # fail
    failed = alice.batches.retrieve(batch.id)
    assert failed.status == "failed" and failed.failed_at is not None
    assert failed.request_counts.total == 2 and failed.output_file_id is None
    (error,) = failed.errors.data
    assert (
        error.code == "model_not_found"
        and error.line == 1
        and "gpt-4o" in error.message
        and MODEL in error.message
    )


def test_cancel_before_the_job_starts_ends_cancelled_and_a_restart_sees_it(server, tmp_path):
    alice = server.client(ALICE)
    file = upload(alice, [request_line(i) for i in range(3)])
    batch = alice.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    cancelling = alice.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    server.advancer().step(server.batches.load(batch.id), (None, None), now=batch.created_at)
    again = Server(tmp_path / "store")  # a new server process over the same storage
    done = again.client(ALICE).batches.retrieve(batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert alice.batches.cancel(batch.id).status == "cancelled"  # cancelling twice is no error


def test_two_replicas_writing_the_same_event_agree_on_the_first(server):
    first = server.store.write_once("batches/x", "end.json", {"status": "completed"})
    second = Store(str(server.store.root)).write_once("batches/x", "end.json", {"status": "cancelled"})
    assert first == second == {"status": "completed"}


def test_next_step_follows_openais_lifecycle():
    req = {"id": "batch_x", "expires_at": 100}
    valid = {"validated": {"errors": []}}
    started = valid | {"in_progress": {"at": 1}}
    cases = [
        ({}, None, 0, "validate"),
        ({"validated": {"errors": [{"code": "x"}]}}, None, 0, "fail"),
        (valid, None, 0, "submit"),
        (started, LIVE_JOB, 0, None),
        (started, "SUCCEEDED", 0, "complete"),
        (started, "FAILED", 0, "fail"),
        (started, None, 0, "submit"),  # the cluster lost the job: resume it
        (started | {"cancelling": {"at": 2}}, LIVE_JOB, 0, "stop"),
        (started | {"cancelling": {"at": 2}}, "STOPPED", 0, "cancel"),
        ({"cancelling": {"at": 2}}, None, 0, "cancel"),
        (started, LIVE_JOB, 100, "stop"),
        (started, "STOPPED", 100, "expire"),
        (started | {"end": {"status": "completed", "at": 3}}, "SUCCEEDED", 0, None),
    ]
    for events, job, now, expected in cases:
        assert next_step(State(req, events), job, now) == expected, (events, job, now)


def test_the_batch_object_is_openais(server):
    req = {
        "id": "batch_" + "0" * 32,
        "endpoint": "/v1/completions",
        "input_file_id": "file-1",
        "completion_window": "24h",
        "created_at": 1,
        "expires_at": 2,
    }
    events = {"validated": {"total": 5, "errors": [], "model": MODEL}, "in_progress": {"at": 1}}
    live = batch_object(State(req, events), {"completed": 2, "failed": 1})
    assert live["status"] == "in_progress" and live["request_counts"] == {
        "total": 5,
        "completed": 2,
        "failed": 1,
    }
    events["end"] = {
        "status": "completed",
        "at": 3,
        "request_counts": {"total": 5, "completed": 4, "failed": 1},
        "output_file_id": "file-o",
    }
    done = openai.types.Batch.model_validate(batch_object(State(req, events)))
    assert done.completed_at == 3 and done.output_file_id == "file-o" and done.model == MODEL


def test_scan_counts_requests_and_finds_the_model(tmp_path):
    store = Store(str(tmp_path))
    (tmp_path / "f.jsonl").write_bytes(jsonl([request_line(i, model="m") for i in range(3)]) + b"\n")
    assert scan(store, "f.jsonl") == (3, "m")


def test_serve_command_refuses_to_start_without_keys_or_with_a_bad_config(tmp_path, capsys, monkeypatch):
    from runner.cli import main

    monkeypatch.delenv(ENV_VAR, raising=False)
    base = ["serve", "--storage", str(tmp_path / "s"), "--address", "http://127.0.0.1:1"]
    assert main([*base, "--config", "configs/serve-demo.yaml"]) == 2
    assert "never runs without keys" in capsys.readouterr().err
    keys = tmp_path / "keys"
    keys.write_text(KEYS)
    assert main([*base, "--config", str(tmp_path / "none.yaml"), "--api-keys", str(keys)]) == 2
    assert "--config: file not found" in capsys.readouterr().err
    assert (
        main(
            [
                *base,
                "--config",
                "configs/serve-demo.yaml",
                "--config",
                "configs/serve-demo.yaml",
                "--api-keys",
                str(keys),
            ]
        )
        == 2
    )
    assert "is served by both" in capsys.readouterr().err


def test_two_replicas_over_one_storage_see_and_cancel_the_same_batches(server, tmp_path):
    other = Server(tmp_path / "store")  # a second replica: same storage, its own process state
    file = upload(server.client(ALICE), [request_line(0)])
    batch = server.client(ALICE).batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert other.client(ALICE).batches.cancel(batch.id).status == "cancelling"
    assert server.client(ALICE).batches.retrieve(batch.id).status == "cancelling"
    assert other.client(ALICE).files.content(file.id).read() == jsonl([request_line(0)])


def test_a_batch_past_its_window_expires(server):
    alice = server.client(ALICE)
    file = upload(alice, [request_line(0)])
    batch = alice.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    server.advancer().step(server.batches.load(batch.id), (None, None), now=batch.expires_at)
    expired = alice.batches.retrieve(batch.id)
    assert expired.status == "expired" and expired.expired_at is not None and expired.output_file_id is None


def test_an_input_file_deleted_before_validation_fails_the_batch(server):
    alice = server.client(ALICE)
    file = upload(alice, [request_line(0)])
    batch = alice.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    alice.files.delete(file.id)
    advancer = server.advancer()
    for _ in range(2):  # validate, fail
        advancer.step(server.batches.load(batch.id), (None, None), now=batch.created_at)
    failed = alice.batches.retrieve(batch.id)
    assert failed.status == "failed" and failed.errors.data[0].code == "invalid_file"


def test_without_a_cluster_batches_still_validate_and_cancel(server, tmp_path):
    """The cluster does not answer: a pass still fails the batch that does not validate and ends the
    cancelled one that has no job; nothing is submitted."""
    from jobs.openai_batch.server.runs import Runs

    alice = server.client(ALICE)
    unknown = upload(alice, [request_line(0, model="gpt-4o")])
    bad = alice.batches.create(
        input_file_id=unknown.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    good = upload(alice, [request_line(0)])
    cancelled = alice.batches.create(
        input_file_id=good.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    alice.batches.cancel(cancelled.id)
    advancer = Advancer(server.batches, server.models, Runs("http://127.0.0.1:1"), max_requests=100)
    advancer.pass_once()
    advancer.pass_once()
    assert alice.batches.retrieve(bad.id).status == "failed"
    assert alice.batches.retrieve(cancelled.id).status == "cancelled"


def test_a_job_that_failed_in_the_clusters_setup_is_submitted_again(server, monkeypatch):
    """A job attempt that failed before its driver wrote `_job.json` (Ray's runtime-env setup, not the
    batch) is submitted again, up to START_ATTEMPTS attempts; one that started is the batch's failure."""
    from types import SimpleNamespace

    from jobs.openai_batch.server.advance import START_ATTEMPTS
    from jobs.openai_batch.server.batches import job_dir

    advancer, done = server.advancer(), []
    monkeypatch.setattr(advancer, "submit", lambda state, sid: done.append(("submit", sid)))
    monkeypatch.setattr(advancer, "fail", lambda state, sid: done.append(("fail", sid)))
    state = State({"id": "batch_x", "expires_at": 10**10}, {"validated": {"errors": []}, "in_progress": {}})

    def step(job):
        advancer.runs = SimpleNamespace(status=lambda _batch_id: job)  # the cluster's answer, re-read
        advancer.step(state, job, 0)

    step(("FAILED", "runner-batch_x-1"))
    step(("FAILED", f"runner-batch_x-{START_ATTEMPTS}"))
    server.store.write_once(job_dir("batch_x"), "_job.json", {"state": "failed"})
    step(("FAILED", "runner-batch_x-1"))
    assert done == [
        ("submit", "runner-batch_x-1"),
        ("fail", f"runner-batch_x-{START_ATTEMPTS}"),
        ("fail", "runner-batch_x-1"),
    ]
