"""Jobs on a Ray cluster through Ray's Job Submission API (the dashboard's job server, port 8265).

`runner submit` ships the working directory (the config and input files with it) and runs
`python -m runner run CONFIG --set ray.address=auto ...` as the job's driver on the head node. The
submission id is derived from the output path and the settings hash (`JobConfig.result_hash`), plus
an attempt number: submitting the same job while it runs attaches to it instead of starting a second
driver; a finished or stopped one is followed by attempt n+1, which resumes from the committed rows.
Two submits racing for the same attempt: Ray refuses the second id and that one attaches. The
output directory's lease stays the last line of defence.

What is shipped is printed first (file count, size, the largest files). `--env NAME` puts the value in
the job's description (`runtime_env.env_vars`), which anyone with access to the cluster's job API can
read; `--env-from-cluster` and `--secret-file` send only names and paths (`runner.orchestration.secret_env`).

Job metadata (`runner`, `runner_key`, `kind`, `config`, `output`) marks this project's jobs, so
`runner list` and `runner status CONFIG` find them among everything else on the cluster.
Ray's own `ray job submit` works as well; this adds the id scheme, the exit code and the checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from runner import compat
from runner.config import JobConfig
from runner.errors import RunnerError
from runner.orchestration import secret_env

PROJECT = "hf-batch-runner"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Ray sends SIGTERM on `stop_job`, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (3 s by default, read by
# the job's supervisor from the job's runtime_env): long enough here to commit rows and write _job.json.
STOP_GRACE_S = 60
AGENT_WAIT_S = 60
# Never uploaded with the working directory (Ray also leaves out what .gitignore lists).
EXCLUDES = [".git", ".venv", "venv", "outputs", "output", "__pycache__", "*.pyc"]


class ClusterError(RunnerError):
    """The cluster cannot be reached, or the job named does not exist there."""

    exit_code = 2


@dataclass
class Submission:
    """What `runner submit` sends: the entrypoint, its runtime env, the id key and the metadata."""

    key: str
    entrypoint: str
    runtime_env: dict
    metadata: dict = field(default_factory=dict)


def connect(address: str | None):
    """A `JobSubmissionClient` for the dashboard at `address` (else RAY_ADDRESS, else localhost)."""
    address = address or _env_address() or DEFAULT_ADDRESS
    url = urlparse(address)
    if url.scheme not in ("http", "https") or not url.hostname or url.port is None:
        raise ClusterError(
            f"--address: {address!r} is not a Ray dashboard address; give http://HEAD:8265 "
            "(the dashboard's job server, not the GCS port 6379 or ray://)"
        )
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError as err:
        raise ClusterError(f"--address: the Ray dashboard at {address} {auth_hint(err)}") from None
    except (ConnectionError, OSError) as err:
        raise ClusterError(
            f"--address: cannot reach the Ray dashboard at {address} ({type(err).__name__}); is the head "
            "up with its dashboard (`ray start --head --include-dashboard true`, needs ray[default])?"
        ) from None
    except RuntimeError as err:  # it answered: a refusal (token authentication), a version it cannot use
        raise ClusterError(f"--address: the Ray dashboard at {address} refused: {_reason(err)}") from None


def auth_hint(err: Exception) -> str:
    """Ray's token authentication refused us: what to set, in one line. The job SDK sends a token only
    when RAY_AUTH_MODE=token is set on this side (ray 2.60: `is_token_auth_enabled`), and reads it from
    RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH names, else ~/.ray/auth_token."""
    where = "(print it on the head with `ray get-auth-token`)"
    if str(err).startswith("Authentication failed"):
        return (
            "refused the authentication token sent (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token): "
            f"it is not this cluster's {where}"
        )
    sent = "RAY_AUTH_MODE=token is set but no token was found" if _token_mode() else "no token was sent"
    return (
        f"requires Ray's token authentication and {sent}: export RAY_AUTH_MODE=token and "
        f"RAY_AUTH_TOKEN=<the cluster's token> {where}, or RAY_AUTH_TOKEN_PATH=<a file holding it>"
    )


def _token_mode() -> bool:
    return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


def _env_address() -> str | None:
    value = os.environ.get("RAY_ADDRESS", "")
    return value if value.startswith(("http://", "https://")) else None


def job_key(cfg: JobConfig) -> str:
    """The same output path and result settings give the same key (placement, retries do not count)."""
    output = posixpath.normpath(cfg.output.path)
    digest = hashlib.sha256(f"{output}\n{cfg.result_hash()}".encode()).hexdigest()[:12]
    return f"runner-{digest}"


def plan(
    config: str,
    cfg: JobConfig,
    args: list[str],
    kind: str = "run",
    working_dir: str = ".",
    env: list[str] | None = None,
    pip: list[str] | None = None,
    stop_grace_s: int = STOP_GRACE_S,
    env_from_cluster: list[str] | None = None,
    secret_files: list[str] | None = None,
) -> Submission:
    """The submission for `runner KIND CONFIG ARGS...` run from `working_dir` on the cluster.

    `args` are the command's own options (--set ..., --max-error-rate ...), passed on as they are.
    `env` values are in the job's description; `env_from_cluster` and `secret_files` only name them
    (`runner.orchestration.secret_env`)."""
    check_output_path(cfg.output.path)
    relative = _inside(config, working_dir)
    command = ["python", "-m", "runner", kind, relative, "--set", "ray.address=auto", *args]
    secrets = secret_env.runtime_env(env_from_cluster or [], secret_files or [])
    env_vars = {"RAY_JOB_STOP_WAIT_TIME_S": str(stop_grace_s), **_env_vars(env or [])}
    env_vars.update(secrets.pop("env_vars", {}))
    runtime_env: dict = {"working_dir": str(Path(working_dir).resolve()), "excludes": EXCLUDES, **secrets}
    runtime_env["env_vars"] = env_vars
    if pip:
        runtime_env["pip"] = list(pip)
    key = job_key(cfg)
    metadata = {"runner": PROJECT, "runner_key": key, "kind": kind, "config": relative}
    metadata["output"] = cfg.output.path
    return Submission(key, shlex.join(command), runtime_env, metadata)


@dataclass(frozen=True)
class Shipped:
    """What the working directory uploads: its files (as Ray's packer walks them) and their size."""

    root: str
    files: int
    size: int
    largest: list[tuple[str, int]]

    def line(self) -> str:
        """One line for the terminal, before the upload."""
        big = ", ".join(f"{name} {_mib(size)}" for name, size in self.largest)
        return (
            f"shipping {self.root} to the cluster: {self.files} files, {_mib(self.size)} "
            f"(.gitignore, .rayignore and {', '.join(EXCLUDES)} left out; largest: {big or 'none'})"
        )


def shipped(working_dir: str, top: int = 3) -> Shipped:
    """What `working_dir` ships with the job, walked as Ray walks it (runner.compat)."""
    root = Path(working_dir).resolve()
    sizes = [
        (p.relative_to(root).as_posix(), p.stat().st_size)
        for p in compat.ray_working_dir_files(str(root), EXCLUDES)
    ]
    largest = sorted(sizes, key=lambda item: -item[1])[:top]
    return Shipped(str(root), len(sizes), sum(size for _, size in sizes), largest)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def check_output_path(path: str) -> None:
    """On a cluster the driver runs in a temporary copy of the working directory, on the head node: a
    relative output path would vanish with it, and the next attempt (maybe on another cluster) could
    not resume. An absolute path must be storage the next driver sees too (shared, or an object store)."""
    if "://" not in path and not os.path.isabs(path):
        raise ClusterError(
            f"output.path: {path!r} is relative, so it would be written inside the job's temporary copy "
            "of the working directory; give an absolute path on shared storage or an s3:// / gs:// URI"
        )


def _inside(config: str, working_dir: str) -> str:
    path, root = Path(config).resolve(), Path(working_dir).resolve()
    if not path.is_relative_to(root):
        raise ClusterError(
            f"config: {config} is outside the working directory {root}, which is what is shipped to the "
            "cluster; put it there or pass --working-dir"
        )
    return path.relative_to(root).as_posix()


def _env_vars(names: list[str]) -> dict:
    out = {}
    for item in names:
        name, sep, value = item.partition("=")
        if not sep:
            if name not in os.environ:
                raise ClusterError(f"--env: {name} is not set here (pass NAME=VALUE to give its value)")
            value = os.environ[name]
        out[name] = value
    return out


def submit(client, sub: Submission) -> tuple[str, bool]:
    """Submit, or attach to this job's attempt still pending or running; (submission id, attached)."""
    attempts = attempts_of(client, sub.key)
    live = [j for j in attempts if str(j.status) not in TERMINAL]
    if live:
        return live[-1].submission_id, True
    sid = f"{sub.key}-{len(attempts) + 1}"
    try:
        _submit_when_ready(client, sub, sid)
    except RuntimeError as err:
        if "already exists" not in str(err):  # another submit of the same attempt won the race
            raise ClusterError(f"submit: the cluster refused the job: {_reason(err)}") from None
        return sid, True
    return sid, False


def _submit_when_ready(client, sub: Submission, sid: str, timeout_s: float = AGENT_WAIT_S) -> None:
    """Submit; a head that has just started answers "No available agent" until its dashboard agent is
    up (seconds): retried until `timeout_s`, as a Slurm or KubeRay script submits right after start."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.submit_job(
                entrypoint=sub.entrypoint,
                runtime_env=sub.runtime_env,
                metadata=sub.metadata,
                submission_id=sid,
            )
            return
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def attempts_of(client, key: str) -> list:
    """This job's submissions on the cluster, oldest first."""
    jobs = [j for j in client.list_jobs() if (j.metadata or {}).get("runner_key") == key]
    return sorted(jobs, key=lambda j: _attempt(j.submission_id))


def _attempt(sid: str | None) -> int:
    tail = (sid or "").rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def ours(client) -> list:
    """This project's jobs on the cluster (by their metadata), oldest first."""
    jobs = [j for j in client.list_jobs() if (j.metadata or {}).get("runner") == PROJECT]
    return sorted(jobs, key=lambda j: j.start_time or 0)


def info(client, sid: str):
    """The job's details; a ClusterError naming the id when the cluster has no such job."""
    try:
        return client.get_job_info(sid)
    except RuntimeError as err:
        if "404" in str(err) or "does not exist" in str(err):
            raise ClusterError(
                f"job {sid!r}: no such job on this cluster (`runner list` shows this project's jobs)"
            ) from None
        raise ClusterError(f"job {sid!r}: {_reason(err)}") from None


def _reason(err: Exception) -> str:
    from ray.exceptions import AuthenticationError

    if isinstance(err, AuthenticationError):
        return auth_hint(err)
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def follow(client, sid: str, out=None) -> None:
    """Print the job's logs as they come (from the start) until it ends."""
    out = out or sys.stdout

    async def tail() -> None:
        async for lines in client.tail_job_logs(sid):
            out.write(lines)
            out.flush()

    asyncio.run(tail())


def wait(client, sid: str, timeout_s: float | None = None, poll_s: float = 1.0):
    """The job's details once it is in a terminal state (or the timeout passed)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        details = info(client, sid)
        if str(details.status) in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return details
        time.sleep(poll_s)


def exit_code(details) -> int:
    """The driver's own exit code (0/1/2 as `runner run`); 143 when stopped (Ray records no code for a
    stopped job: it sent SIGTERM); 1 when it never ran."""
    code = getattr(details, "driver_exit_code", None)
    if code is not None:
        return int(code)
    return {"SUCCEEDED": 0, "STOPPED": 143}.get(str(details.status), 1)


def describe(details) -> str:
    """One line: id, status, exit code, config, output (and Ray's message when it failed)."""
    meta = details.metadata or {}
    parts = [details.submission_id or details.job_id, str(details.status)]
    if details.driver_exit_code is not None:
        parts.append(f"exit={details.driver_exit_code}")
    parts += [f"{k}={meta[k]}" for k in ("kind", "config", "output") if meta.get(k)]
    line = "  ".join(parts)
    if str(details.status) == "FAILED" and details.message and details.driver_exit_code is None:
        line += f"  ({details.message.strip().splitlines()[-1]})"
    return line
