"""`runner submit / status / logs / stop / list` against a real Ray cluster with its dashboard.

The cluster: a head (no GPUs, the dashboard's job server on a free loopback port) and a worker node
with 2 fake GPUs, as separate processes on 127.0.0.1. Jobs run the demo config (padded batching).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from runner.config import load_config
from runner.orchestration import submit
from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow  # Ray clusters with a dashboard and jobs submitted through it

REPO = Path(__file__).resolve().parent.parent
DEMO = "configs/demo.yaml"
PADDED = ["--set", "batching.strategy=padded", "--env", "RUNNER_CACHE"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard_missing() -> str | None:
    """Which dashboard dependency (ray[default]) is missing, if any: the job server needs them."""
    from ray._private.utils import get_dashboard_dependency_error

    err = get_dashboard_dependency_error()
    return None if err is None else f"the Ray dashboard cannot start: {err} (install ray[default])"


def start_cluster(workers: list[int], cpus: int = 2, temp_dir: str | None = None):
    """A head with its dashboard and one worker node per entry of `workers` (its fake GPU count).

    `temp_dir`: the cluster's own Ray temp directory, holding its address as `ray start` leaves it,
    where its jobs' `ray.address=auto` looks first (else they take any GCS running on this machine)."""
    from ray.cluster_utils import Cluster

    port = free_port()
    # The job's `python` is the one on the cluster's PATH: this environment's, as on a real head node.
    venv = str(Path(sys.executable).parent)
    if not os.environ["PATH"].startswith(venv + os.pathsep):
        os.environ["PATH"] = venv + os.pathsep + os.environ["PATH"]
    head = {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": True}
    head |= {"dashboard_host": "127.0.0.1", "dashboard_port": port}
    own = {"temp_dir": temp_dir} if temp_dir else {}
    head |= own
    # Each node's dashboard agent on its own port: the fixed default (52365) would clash between the
    # nodes of one machine, and the job server needs the head's agent.
    cluster = Cluster(
        initialize_head=True, head_node_args=head | {"dashboard_agent_listen_port": free_port()}
    )
    for gpus in workers:
        cluster.add_node(num_cpus=1, num_gpus=gpus, dashboard_agent_listen_port=free_port(), **own)
    cluster.wait_for_nodes()
    if temp_dir:  # what `ray start --head` writes: a job's `auto` reads it before looking for any GCS
        Path(temp_dir, "ray_current_cluster").write_text(cluster.address)
    address = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # the job server answers a little after the head is up
        try:
            token = os.environ.get("RAY_AUTH_TOKEN", "")
            probe = urllib.request.Request(
                f"{address}/api/version", headers={"Authorization": f"Bearer {token}"}
            )
            urllib.request.urlopen(probe, timeout=2).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    return cluster, address


@pytest.fixture(scope="module", autouse=True)
def token_auth():
    """Ray's token authentication, on and with one token for this module's clusters and every client
    (the runner CLI in subprocesses inherits it), as `ray start --head` turns it on by default in
    Ray 2.60: whatever mode an earlier test left in this process's Ray config is reset."""
    from ray._private.authentication_test_utils import reset_auth_token_state

    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    os.environ |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    reset_auth_token_state()
    yield os.environ["RAY_AUTH_TOKEN"]
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    reset_auth_token_state()


@pytest.fixture(scope="module")
def cluster_a():
    missing = dashboard_missing()
    if missing:
        pytest.skip(missing)
    cluster, address = start_cluster([2])
    yield address
    cluster.shutdown()


def runner(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rows(out: Path) -> list[dict]:
    return pq.read_table(out, columns=["id", "replica"]).to_pylist()


def test_submit_runs_the_demo_job_and_exits_with_its_code(cluster_a, tmp_path):
    out = tmp_path / "demo"
    done = runner("submit", DEMO, "--address", cluster_a, "--output", str(out), *PADDED)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "submitted runner-" in done.stderr and "SUCCEEDED  exit=0" in done.stderr
    assert "generating: 100%" in done.stdout  # the driver's progress line, streamed from the job's log
    ids = [r["id"] for r in rows(out)]
    assert sorted(ids) == [f"q{i:03d}" for i in range(20)]
    sid = done.stderr.split("submitted ", 1)[1].split()[0]

    status = runner("status", sid, "--address", cluster_a)
    assert status.returncode == 0 and status.stdout.startswith(f"{sid}  SUCCEEDED  exit=0  kind=run")
    assert "done, 20/20 rows done, 0 errors" in status.stdout  # its output directory, readable here
    # By config, without repeating its --set: matched by the output directory.
    by_config = runner("status", DEMO, "--output", str(out), "--address", cluster_a)
    steady = lambda text: [line for line in text.splitlines() if "lease:" not in line]  # noqa: E731 - heartbeat age
    assert steady(by_config.stdout) == steady(status.stdout)
    listed = runner("list", "--address", cluster_a).stdout
    assert sid in listed and "rows=20/20 errors=0 (done)" in listed
    logs = runner("logs", sid, "--address", cluster_a)
    assert logs.returncode == 0 and "20 rows" in logs.stdout


def test_same_job_submitted_twice_runs_once(cluster_a, tmp_path):
    args = [DEMO, "--address", cluster_a, "--output", str(tmp_path / "twice"), *PADDED]
    first = runner("submit", *args, "--no-wait")
    assert first.returncode == 0, first.stderr
    second = runner("submit", *args)  # while the first runs: attaches and exits with its code
    assert second.returncode == 0, second.stderr
    sid = first.stdout.strip()
    assert f"attached to the running job {sid}" in second.stderr
    cfg = load_config(REPO / DEMO, ["batching.strategy=padded", f"output.path={tmp_path / 'twice'}"])
    attempts = submit.attempts_of(submit.connect(cluster_a), submit.job_key(cfg))
    assert [j.submission_id for j in attempts] == [sid]
    assert len(rows(tmp_path / "twice")) == 20


def test_the_drivers_own_exit_code_comes_back(cluster_a, tmp_path):
    """The input is checked by the driver on the cluster: exit 2 and its one line, as `runner run`."""
    done = runner(
        "submit", DEMO, "--address", cluster_a, "--output", str(tmp_path / "o"), *PADDED,
        "--set", f"data.source={tmp_path / 'missing.jsonl'}",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "FAILED  exit=2" in done.stderr and "missing.jsonl" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "runner-nope-1"], "job 'runner-nope-1': no such job on this cluster"),
        (["logs", "runner-nope-1"], "job 'runner-nope-1': no such job on this cluster"),
        (["stop", "runner-nope-1"], "job 'runner-nope-1': no such job on this cluster"),
        (["submit", DEMO], "output.path: 'outputs/demo' is relative"),
        (["submit", "/etc/hostname"], "top level must be a mapping"),
    ],
)
def test_unknown_id_or_bad_job_is_one_line_exit_2(cluster_a, args, message):
    if "--address" not in args:
        args = [*args, "--address", cluster_a]
    done = runner(*args, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("head:6379", "--address: 'head:6379' is not a Ray dashboard address"),
        ("ray://head:10001", "--address: 'ray://head:10001' is not a Ray dashboard address"),
        ("http://127.0.0.1:{port}", "--address: cannot reach the Ray dashboard at http://127.0.0.1:"),
    ],
    ids=["host-port", "ray-client", "nothing-listening"],  # stable ids: xdist workers collect alike
)
def test_bad_or_unreachable_address_is_one_line_exit_2(address, message):
    done = runner("list", "--address", address.format(port=free_port()), timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr


def long_input(folder: Path, n: int = 160) -> Path:
    return write_jsonl(
        folder / "long.jsonl",
        [{"qid": f"r{i:04d}", "prompt": f"Count to {i}.", "topic": "t"} for i in range(n)],
    )


def wait_for_parts(out: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not list(out.glob("part-*.parquet")):
        assert time.monotonic() < deadline, "no part file was committed"
        time.sleep(0.5)


def test_stopped_job_resumes_on_another_cluster_with_another_replica_count(cluster_a, tmp_path):
    """Cluster A (2 replicas) stops the job like SIGTERM; cluster B (1 replica) finishes it, each row once."""
    out = tmp_path / "moved"
    job = [DEMO, "--output", str(out), *PADDED, "--set", f"data.source={long_input(tmp_path)}"]
    job += [
        "--set",
        "output.rows_per_file=4",
        "--set",
        "output.flush_seconds=1",
        "--set",
        "batching.rows_per_task=2",
    ]
    sid = runner("submit", *job, "--address", cluster_a, "--no-wait").stdout.strip()
    wait_for_parts(out)
    stopped = runner("stop", sid, "--address", cluster_a)
    assert stopped.returncode == 0 and stopped.stdout.startswith(f"{sid}  STOPPED  kind=run"), stopped.stdout
    summary = json.loads((out / "_job.json").read_text())
    assert summary["status"] == "interrupted" and summary["replicas"] == 2
    committed = summary["output_rows"]
    assert 0 < committed < 160

    cluster_b, address_b = start_cluster([1], cpus=1)
    try:
        done = runner("submit", *job, "--address", address_b)
    finally:
        cluster_b.shutdown()
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "_job.json").read_text())
    assert summary["status"] == "done" and summary["replicas"] == 1
    assert summary["rows_skipped_already_done"] == committed
    ids = [r["id"] for r in rows(out)]
    assert sorted(ids) == [f"r{i:04d}" for i in range(160)]


def test_runner_env_reaches_the_driver(tmp_path):
    """--env NAME takes the value from here; an unset one is refused before anything is sent."""
    cfg = load_config(REPO / DEMO, [f"output.path={tmp_path}"])
    os.environ["RUNNER_TEST_VALUE"] = "x y"
    sub = submit.plan(str(REPO / DEMO), cfg, [], working_dir=str(REPO), env=["RUNNER_TEST_VALUE", "B=2"])
    assert (
        sub.runtime_env["env_vars"]["RUNNER_TEST_VALUE"] == "x y" and sub.runtime_env["env_vars"]["B"] == "2"
    )
    assert sub.entrypoint == "python -m runner run configs/demo.yaml --set ray.address=auto"
    with pytest.raises(submit.ClusterError, match="--env: RUNNER_UNSET_X is not set here"):
        submit.plan(str(REPO / DEMO), cfg, [], working_dir=str(REPO), env=["RUNNER_UNSET_X"])
    with pytest.raises(submit.ClusterError, match="config: .* is outside the working directory"):
        submit.plan(str(REPO / DEMO), cfg, [], working_dir=str(tmp_path))
