"""`runner submit`: secrets without their values in the job's description, what the working directory
ships (as Ray's packer walks it), and a dashboard that wants Ray's auth token."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from runner.config import load_config
from runner.errors import ConfigError
from runner.orchestration import secret_env, submit

REPO = Path(__file__).resolve().parent.parent
DEMO = "configs/demo.yaml"
SECRET = "hf_s3cret_value"


def demo(tmp_path):
    return load_config(REPO / DEMO, [f"output.path={tmp_path / 'out'}"])


def test_secret_flags_send_names_and_paths_never_values(tmp_path, monkeypatch):
    token = tmp_path / "hf_token"
    token.write_text(SECRET + "\n")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    sub = submit.plan(
        str(REPO / DEMO),
        demo(tmp_path),
        [],
        working_dir=str(REPO),
        env_from_cluster=["HF_TOKEN"],
        secret_files=[f"HF_TOKEN={token}"],
    )
    described = json.dumps([sub.entrypoint, sub.runtime_env, sub.metadata])
    assert SECRET not in described
    env = sub.runtime_env["env_vars"]
    assert env[secret_env.CLUSTER_ENV] == "HF_TOKEN"
    assert json.loads(env[secret_env.SECRET_FILES]) == {"HF_TOKEN": str(token)}
    assert sub.runtime_env["worker_process_setup_hook"] == "runner.orchestration.secret_env.load_secret_files"
    assert "RAY_JOB_STOP_WAIT_TIME_S" in env  # the runner's own variables are kept alongside
    with_value = submit.plan(str(REPO / DEMO), demo(tmp_path), [], working_dir=str(REPO), env=["HF_TOKEN"])
    assert with_value.runtime_env["env_vars"]["HF_TOKEN"] == SECRET  # what --env does, and says it does


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"secret_files": ["HF_TOKEN=relative/token"]},
            "--secret-file 'HF_TOKEN=relative/token': expected NAME=/absolute/path",
        ),
        ({"secret_files": ["HF_TOKEN"]}, "--secret-file 'HF_TOKEN': expected NAME=/absolute/path"),
        (
            {"env_from_cluster": ["HF-TOKEN"]},
            "--env-from-cluster 'HF-TOKEN': not an environment variable name",
        ),
    ],
)
def test_bad_secret_flags_are_one_line(tmp_path, flags, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")):
        submit.plan(str(REPO / DEMO), demo(tmp_path), [], working_dir=str(REPO), **flags)


def test_the_driver_reads_secret_files_and_checks_cluster_variables(tmp_path, monkeypatch):
    token = tmp_path / "hf_token"
    token.write_text(SECRET + "\n")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv(secret_env.SECRET_FILES, json.dumps({"HF_TOKEN": str(token)}))
    monkeypatch.setenv(secret_env.CLUSTER_ENV, "HOME")
    secret_env.apply()
    assert os.environ["HF_TOKEN"] == SECRET
    monkeypatch.setenv(secret_env.CLUSTER_ENV, "HOME,RUNNER_NOT_SET_ANYWHERE")
    with pytest.raises(
        ConfigError, match="^--env-from-cluster RUNNER_NOT_SET_ANYWHERE: not set on the cluster"
    ):
        secret_env.apply()
    monkeypatch.setenv(secret_env.SECRET_FILES, json.dumps({"HF_TOKEN": str(tmp_path / "gone")}))
    with pytest.raises(ConfigError, match=r"^--secret-file HF_TOKEN=.*gone: cannot read it on the node"):
        secret_env.apply()
    secret_env.load_secret_files()  # a worker's hook logs instead of raising


def test_shipped_counts_what_ray_uploads(tmp_path):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "outputs").mkdir()
    (work / ".git").mkdir()
    (work / "configs").mkdir()
    (work / "configs" / "job.yaml").write_text("x" * 100)
    (work / "data" / "in.jsonl").write_text("y" * 2000)
    (work / "data" / "scratch.bin").write_bytes(b"z" * 5000)
    (work / "data" / ".gitignore").write_text("*.bin\n")  # a nested .gitignore counts for its directory
    (work / ".rayignore").write_text("notes.txt\n")
    (work / "notes.txt").write_text("private")
    (work / "outputs" / "part.parquet").write_bytes(b"o" * 9000)  # the runner's own excludes
    (work / ".git" / "HEAD").write_text("ref")
    shipped = submit.shipped(str(work))
    names = {"configs/job.yaml", "data/in.jsonl", "data/.gitignore", ".rayignore"}
    assert shipped.files == len(names)
    assert shipped.size == 100 + 2000 + len("*.bin\n") + len("notes.txt\n")
    assert shipped.largest[0] == ("data/in.jsonl", 2000)
    assert shipped.line().startswith(
        f"shipping {work} to the cluster: 4 files, 0.0 MiB (.gitignore, .rayignore"
    )


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Answers as a dashboard with Ray's token authentication does to a request without the token."""

    def do_GET(self):  # noqa: N802 - the http.server interface
        self.send_response(401)
        self.end_headers()
        self.wfile.write(b"Unauthorized: Missing authentication token")

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing_dashboard():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_dashboard_that_wants_a_token_gets_a_one_line_hint(refusing_dashboard, tmp_path):
    result = run_cli(
        "submit",
        DEMO,
        "--address",
        refusing_dashboard,
        "--output",
        str(tmp_path / "out"),
        "--env",
        "RUNNER_TEST_VISIBLE=1",
        "--no-wait",
        env={"RAY_AUTH_MODE": "disabled"},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("note: --env RUNNER_TEST_VISIBLE: its value is in the job's description")
    assert lines[1].startswith(f"shipping {REPO} to the cluster: ") and " files, " in lines[1]
    assert lines[2] == (
        f"error: --address: the Ray dashboard at {refusing_dashboard} requires Ray's token authentication and "
        "no token was sent: export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<the cluster's token> (print it on "
        "the head with `ray get-auth-token`), or RAY_AUTH_TOKEN_PATH=<a file holding it>"
    )
    assert len(lines) == 3


@pytest.mark.slow
def test_secret_files_reach_every_worker_through_rays_setup_hook(tmp_path):
    """A real local Ray with the runtime_env `runner submit` sends: a task on a worker sees the value."""
    import ray

    token = tmp_path / "hf_token"
    token.write_text(SECRET + "\n")
    runtime_env = secret_env.runtime_env([], [f"RUNNER_TEST_SECRET={token}"])
    env = runtime_env["env_vars"]
    env["PYTHONPATH"] = str(REPO)
    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env=runtime_env,
        log_to_driver=False,
    )
    try:

        @ray.remote
        def read() -> str | None:
            return os.environ.get("RUNNER_TEST_SECRET")

        assert ray.get(read.remote(), timeout=120) == SECRET
    finally:
        ray.shutdown()
