"""Secrets for a job on a cluster, without their values in the job's description.

`runner submit --env NAME` copies the value into the job's `runtime_env.env_vars`, which the cluster's
job API shows to anyone who can reach it (`ray job list`, the dashboard). Two ways keep a value out:

- `--env-from-cluster NAME`: the variable is already set where the cluster's Ray runs (exported
  before `ray start` on every node, or a Kubernetes Secret in the pods' env); Ray's processes inherit
  it. Only the name travels (`RUNNER_CLUSTER_ENV`), and the driver checks at start that it is set.
- `--secret-file NAME=PATH`: a file on storage every node reads (a shared filesystem, a mounted
  Kubernetes Secret). Only the name and path travel (`RUNNER_SECRET_FILES`); the driver reads the
  file at start, and every worker process of the job reads it through Ray's
  `worker_process_setup_hook`, before any model is loaded.
"""

from __future__ import annotations

import json
import logging
import os

from runner.errors import ConfigError

log = logging.getLogger(__name__)

CLUSTER_ENV = "RUNNER_CLUSTER_ENV"
SECRET_FILES = "RUNNER_SECRET_FILES"
SETUP_HOOK = "runner.orchestration.secret_env.load_secret_files"


def runtime_env(from_cluster: list[str], files: list[str]) -> dict:
    """The runtime_env entries (env_vars, setup hook) for these flags: names and paths, no values."""
    env_vars: dict[str, str] = {}
    if from_cluster:
        for name in from_cluster:
            _check_name(name, "--env-from-cluster")
        env_vars[CLUSTER_ENV] = ",".join(from_cluster)
    if not files:
        return {"env_vars": env_vars} if env_vars else {}
    paths = {}
    for item in files:
        name, sep, path = item.partition("=")
        _check_name(name, "--secret-file")
        if not sep or not os.path.isabs(path):
            raise ConfigError(
                f"--secret-file {item!r}: expected NAME=/absolute/path on storage every node of the cluster reads"
            )
        paths[name] = path
    env_vars[SECRET_FILES] = json.dumps(paths)
    return {"env_vars": env_vars, "worker_process_setup_hook": SETUP_HOOK}


def _check_name(name: str, flag: str) -> None:
    if not name.isidentifier():
        raise ConfigError(f"{flag} {name!r}: not an environment variable name")


def apply() -> None:
    """On the job's driver: read the secret files into the environment and check that every
    `--env-from-cluster` variable is set, one line naming what is missing (exit 2)."""
    for name, path in _files().items():
        try:
            os.environ[name] = _read(path)
        except OSError as err:
            raise ConfigError(
                f"--secret-file {name}={path}: cannot read it on the node running the driver "
                f"({err.strerror or type(err).__name__})"
            ) from None
    missing = [n for n in os.environ.get(CLUSTER_ENV, "").split(",") if n and n not in os.environ]
    if missing:
        raise ConfigError(
            f"--env-from-cluster {', '.join(missing)}: not set on the cluster node running the driver; "
            "export it before `ray start` on every node (or set it in the pods' env from a Secret)"
        )


def load_secret_files() -> None:
    """Ray's worker_process_setup_hook: every worker process of the job reads the secret files. A file
    this node cannot read is logged, not raised (a raising hook kills the worker with a less clear error):
    what needs the secret then fails naming what it lacks."""
    for name, path in _files().items():
        try:
            os.environ[name] = _read(path)
        except OSError as err:
            log.warning("--secret-file %s=%s: cannot read it on this node (%s)", name, path, err)


def _files() -> dict[str, str]:
    raw = os.environ.get(SECRET_FILES)
    return json.loads(raw) if raw else {}


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().rstrip("\r\n")  # a token file written by `echo` ends with a newline
