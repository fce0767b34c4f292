"""The cluster recipes in scripts/cluster, tested.

Slurm: `slurm.sbatch` runs under a fake `srun` (each task a process on this machine, so each "node" is
a real Ray node on 127.0.0.1) and a fake `scontrol` (the node list; a requeue is recorded), and brings
up a real local Ray cluster that runs the demo job. KubeRay: the manifests parse, have the fields a
RayJob / RayCronJob needs, and their entrypoint is a valid `runner` command line for a config in configs/.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from runner.cli import build_parser
from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow  # Slurm recipe runs: multi-node Ray clusters started by the script

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "scripts" / "cluster"

FAKE_SRUN = r"""#!/usr/bin/env bash
# srun on one machine: the command runs --ntasks times here, each copy one "node", started 3 s apart
# (two `ray start` at once on one machine can pick the same free port); signals passed on; a task
# that fails ends the others, as --kill-on-bad-exit. Each `ray start` gets its own dashboard agent
# port, as separate machines would have: the default (52365) is one port for every node.
n=1
while (( $# )); do
  case $1 in
    --ntasks=*) n=${1#*=}; shift ;;
    -n|--ntasks) n=$2; shift 2 ;;
    -w|-N|--nodes|--nodelist|--exclude) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
for ((i = 0; i < n; i++)); do
  if [[ "$1 $2" == "ray start" ]]; then
    port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$@" --dashboard-agent-listen-port="$port" &
  else
    "$@" &
  fi
  pids+=($!)
  if (( i + 1 < n )); then sleep 3; fi
done
status=0
while true; do
  wait -n
  rc=$?
  if (( rc == 127 )); then break; fi
  if (( rc != 0 && rc < 128 )); then status=$rc; kill -TERM "${pids[@]}" 2>/dev/null; fi
done
exit $status
"""

FAKE_SCONTROL = r"""#!/usr/bin/env bash
# scontrol: `show hostnames a,b,c` prints one per line; `requeue ID` is recorded for the test.
case "$1 $2" in
  "show hostnames") tr ',' '\n' <<< "$3" ;;
  requeue*) echo "requeue $2" >> "$SCONTROL_LOG" ;;
  *) echo "fake scontrol: unsupported: $*" >&2; exit 1 ;;
esac
"""

# The real Ray CLI, for a virtual environment that has no `ray` script of its own.
RAY_CLI = f'#!/usr/bin/env bash\nexec "{sys.executable}" -m ray.scripts.scripts "$@"\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def slurm(tmp_path):
    """Environment of a Slurm allocation of `nodes` nodes with 1 GPU each, the fake tools on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool(bin_dir, "srun", FAKE_SRUN)
    tool(bin_dir, "scontrol", FAKE_SCONTROL)
    tool(bin_dir, "ray", RAY_CLI)

    def env(nodes: int) -> dict:
        return os.environ | {
            "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
            "PYTHON": sys.executable,
            "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NODELIST": ",".join(f"gpu{i}" for i in range(nodes)),
            "SLURM_GPUS_ON_NODE": "1",
            "SLURM_CPUS_ON_NODE": "2",  # a replica takes 0.5: Ray Data read tasks need a whole CPU
            "RAY_PORT": str(free_port()),
            "RUNNER_HEAD_IP": "127.0.0.1",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",  # conftest's 0 keeps `ray start` to one node
            "SCONTROL_LOG": str(tmp_path / "scontrol.log"),
        }

    return env


def sbatch(env: dict, tmp_path: Path, rows: int = 24) -> tuple[subprocess.Popen, Path]:
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [{"qid": f"r{i:04d}", "prompt": f"Count to {i}.", "topic": "t"} for i in range(rows)],
    )
    out = tmp_path / "out"
    settings = [f"data.source={source}", "batching.strategy=padded", "batching.rows_per_task=2"]
    settings += ["output.rows_per_file=4", "output.flush_seconds=1"]
    args = ["--output", str(out), *(item for s in settings for item in ("--set", s))]
    log = open(tmp_path / "slurm.out", "a")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        ["bash", str(RECIPES / "slurm.sbatch"), "configs/demo.yaml", *args],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, out


def ended(proc: subprocess.Popen, tmp_path: Path, timeout: float = 180) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(log_tail(tmp_path)) from None


def log_tail(tmp_path: Path) -> str:
    return (tmp_path / "slurm.out").read_text()[-3000:]


def ray_left(port: str) -> list[str]:
    """Processes of the Ray cluster on this port still running after the script ended."""
    found = subprocess.run(["pgrep", "-af", f"gcs_server_port={port}"], capture_output=True, text=True)
    return found.stdout.splitlines()


def test_sbatch_brings_up_a_three_node_ray_cluster_and_runs_the_job(slurm, tmp_path):
    env = slurm(3)
    proc, out = sbatch(env, tmp_path)
    code = ended(proc, tmp_path)
    log = (tmp_path / "slurm.out").read_text()
    assert code == 0, log[-3000:]
    assert "ray head on gpu0 (127.0.0.1:" in log and "3 node(s)" in log
    rows = pq.read_table(out, columns=["id", "replica"]).to_pylist()
    assert sorted(r["id"] for r in rows) == [f"r{i:04d}" for i in range(24)]
    summary = json.loads((out / "_job.json").read_text())
    assert summary["status"] == "done" and summary["replicas"] == 3  # one GPU on each node
    assert len({r["replica"].split("node=")[1].split()[0] for r in rows}) >= 2
    time.sleep(2)
    assert not ray_left(env["RAY_PORT"]), "Ray is stopped at the end"


@pytest.mark.slow  # two runs of the script, ~2-4 minutes on a busy 2-core machine
def test_sbatch_on_sigterm_commits_requeues_and_the_requeued_run_resumes(slurm, tmp_path):
    env = slurm(2)
    proc, out = sbatch(env, tmp_path, rows=60)
    deadline = time.monotonic() + 150
    while not list(out.glob("part-*.parquet")):
        assert proc.poll() is None and time.monotonic() < deadline, log_tail(tmp_path)
        time.sleep(0.25)
    os.kill(proc.pid, signal.SIGTERM)  # Slurm's --signal=B:TERM before the time limit
    assert ended(proc, tmp_path) == 143
    summary = json.loads((out / "_job.json").read_text())
    assert summary["status"] == "interrupted"
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    committed = summary["output_rows"]

    env["RAY_PORT"] = str(free_port())
    proc, out = sbatch(env, tmp_path, rows=60)  # the requeued job: the same command
    assert ended(proc, tmp_path) == 0, log_tail(tmp_path)
    summary = json.loads((out / "_job.json").read_text())
    assert summary["status"] == "done" and summary["rows_skipped_already_done"] == committed
    ids = pq.read_table(out, columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == [f"r{i:04d}" for i in range(60)]


def check_runner_command(entrypoint: str) -> None:
    """The entrypoint is a `runner` command line that parses, for a config in configs/ that loads
    with its overrides (and, for eval, gates on metrics its tasks report)."""
    from jobs.eval import compare
    from jobs.eval.config import EvalConfig
    from runner.cli import options
    from runner.config import load_config

    words = shlex.split(entrypoint)
    assert words[0] == "runner", entrypoint
    args = build_parser().parse_args(words[1:])
    assert args.command in ("run", "eval") and args.config.startswith("configs/")
    assert "ray.address=auto" in args.overrides, "the driver joins the job's cluster"
    if args.command == "run":
        load_config(REPO / args.config, options.overrides(args))
        return
    cfg = load_config(REPO / args.config, options.overrides(args), kind=EvalConfig)
    gates = compare.parse_gates(args.max_drop, args.fail_below)
    compare.check_gates(gates, [(t.name, m) for t in cfg.task_list() for m in t.scoring.metrics])


def cluster_spec_has_gpu_workers(spec: dict) -> None:
    workers = spec["workerGroupSpecs"]
    limits = [c["resources"]["limits"] for w in workers for c in w["template"]["spec"]["containers"]]
    assert all(int(limit["nvidia.com/gpu"]) >= 1 for limit in limits)
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"


def test_rayjob_manifest_is_a_rayjob_running_a_valid_runner_command():
    doc = yaml.safe_load((RECIPES / "rayjob.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["backoffLimit"] >= 1
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert int(env["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30
    cluster_spec_has_gpu_workers(spec["rayClusterSpec"])
    check_runner_command(spec["entrypoint"])


def test_raycronjob_manifest_schedules_a_valid_nightly_eval():
    doc = yaml.safe_load((RECIPES / "raycronjob.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCronJob"
    assert len(doc["spec"]["schedule"].split()) == 5
    job = doc["spec"]["jobTemplate"]
    assert job["shutdownAfterJobFinishes"] is True and "runtimeEnvYAML" in job
    cluster_spec_has_gpu_workers(job["rayClusterSpec"])
    check_runner_command(job["entrypoint"])
    assert shlex.split(job["entrypoint"])[1] == "eval"


def test_a_broken_entrypoint_is_caught():
    """The check above can fail: a config that is not there, an unknown setting, a gate on no metric."""
    with pytest.raises(Exception, match="config file not found"):
        check_runner_command("runner run configs/nope.yaml --set ray.address=auto")
    with pytest.raises(Exception, match="sampling.nope"):
        check_runner_command("runner run configs/demo.yaml --set ray.address=auto --set sampling.nope=1")
    with pytest.raises(Exception, match="bleu"):
        check_runner_command("runner eval configs/eval-demo.yaml --set ray.address=auto --fail-below bleu=1")
