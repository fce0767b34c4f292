"""Ray: the actor table, Ray Data read-task metadata and actor-pool restart bounds, the files a job's
working directory ships, the process groups of a local Ray's processes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# --- ray -----------------------------------------------------------------------------------------------


def ray_actor_table() -> dict | None:
    """This job's actors from Ray's actor table in the GCS ({actor id: info}), or None when Ray cannot
    say (Ray Client, a changed private API).

    Why private: `ray._private.state.actors` counts every restart (`NumRestarts`) of an actor; the public
    state API (`ray.util.state.list_actors`) needs the dashboard, which a local Ray here runs without.
    Checked: ray 2.60.0. Every failure, including a missing key, is guarded: the caller treats None as unknown."""
    try:
        import ray
        from ray._private import state

        job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
        actors = state.actors(job_id=job)
        return {
            key: {"class": str(info["ActorClassName"]), "restarts": int(info["NumRestarts"])}
            for key, info in actors.items()
        }
    except Exception as err:  # noqa: BLE001 - unknown, never fatal
        log.debug("cannot read Ray's actor table: %s", err)
        return None


def read_task_metadata():
    """Metadata for a `ray.data.ReadTask` whose size is unknown until it runs.

    Why internal: `ReadTask` takes a `ray.data.block.BlockMetadata`, a DeveloperAPI class outside
    `ray.data`'s public names, and its fields change between releases. Checked: ray 2.60.0."""
    from ray.data.block import BlockMetadata

    return BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)


def ray_working_dir_files(working_dir: str, excludes: list[str]) -> list:
    """The files a job's `runtime_env={"working_dir": ..., "excludes": ...}` uploads, as `Path`s: walked
    by Ray's own packer, so `.gitignore` / `.rayignore` in every directory and the excludes count exactly
    as they do for the upload (and `RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1` as well).

    Why private: `ray._private.runtime_env.packaging._dir_travel` and `_get_excludes` are what
    `_zip_files` walks; no public API says what a working directory ships before it is uploaded.
    Checked: ray 2.60.0."""
    import os
    from pathlib import Path

    from ray._private.runtime_env import packaging

    root = Path(working_dir).absolute()
    files: list = []

    def handler(path: Path) -> None:
        if path.is_file():
            files.append(path)

    quiet = logging.getLogger("runner.compat.ray_packaging")  # Ray logs each ignore file it finds
    quiet.setLevel(logging.WARNING)
    include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    packaging._dir_travel(
        root,
        [packaging._get_excludes(root, excludes)],
        handler,
        include_gitignore=include_gitignore,
        logger=quiet,
    )
    return files


def map_batches_on_actors(ds, stage, *, max_restarts: int, max_task_retries: int, **named):
    """`ds.map_batches(stage, **named)` on actors restarted at most `max_restarts` times, each batch
    retried up to `max_task_retries` times (-1: unbounded).

    Why internal: Ray 2.60 deprecates `map_batches(**ray_remote_args)` (removed in 2.64, a warning on
    every call) and has no named parameter for an actor's `max_restarts` / `max_task_retries` yet; its
    Ray Data default is unbounded restarts. `Dataset.map_batches_internal` (a DeveloperAPI) is what
    `map_batches` calls after its checks (a positive batch size, given when asking for GPUs, which the
    callers here always pass) and takes these as remote args without the warning.
    Checked: ray 2.60.0."""
    return ds.map_batches_internal(
        stage, max_restarts=max_restarts, max_task_retries=max_task_retries, **named
    )


@contextmanager
def own_process_groups() -> Iterator[None]:
    """While entered, each process Ray starts for a local instance (GCS, raylet, their agents; the
    raylet's workers then inherit the raylet's group) begins a process group of its own, on Linux.

    Why: schedulers and shells stop a job by signalling its process group (`kill -- -PGID`, a
    terminal's Ctrl-C; Slurm and systemd signal every process of the job or unit instead). When
    Ray's processes share the driver's group they die with it at the same moment, and Ray's core
    worker in the driver then ends the driver itself (exit 1, "The connection to the plasma store is
    failed") before its stop path has written the summary and released the lease. In their own
    groups only the driver gets the signal; it stops cleanly and shuts Ray down. Ray still starts
    them with kernel fate-sharing (PR_SET_PDEATHSIG), so they die with the driver if it is killed.
    Why private: `ray.init` has no option for the children's process group; they are started through
    `ray._private.services.ConsolePopen` (a `subprocess.Popen`), whose `preexec_fn` (Ray's: block
    SIGINT, set the death signal) is chained after `os.setpgid(0, 0)` here. Checked: ray 2.60.0.
    Where the name is missing (another Ray), this does nothing and says so in the debug log."""
    try:
        from ray._private import services

        popen = services.ConsolePopen
    except (ImportError, AttributeError) as err:
        log.debug("cannot give a local Ray's processes their own process groups: %s", err)
        popen = None
    if popen is None or not sys.platform.startswith("linux"):
        yield
        return
    original = popen.__init__

    def __init__(self, *args, **kwargs):
        given = kwargs.get("preexec_fn")

        def preexec() -> None:
            os.setpgid(0, 0)
            if given is not None:
                given()

        kwargs["preexec_fn"] = preexec
        original(self, *args, **kwargs)

    popen.__init__ = __init__
    try:
        yield
    finally:
        popen.__init__ = original


@contextmanager
def keep_sigterm_handler() -> Iterator[None]:
    """While entered, `ray.init` leaves the SIGTERM handler in place instead of installing its own.

    Why: `ray.init` first installs a handler that calls `sys.exit(15)`, so a SIGTERM during Ray's start
    exits without the job's stop path (no summary, the lease held), and that `SystemExit` is lost
    altogether where the handler runs inside a callback whose exceptions Python ignores (a fork's
    after-fork hooks, while Ray starts its processes): the job then went on as if nothing came. With
    the job's own handler in place the signal is at least recorded (runner.orchestration.signals).
    Why private: `ray.init` has no option for it; it calls `ray._private.utils.set_sigterm_handler`,
    which is made a no-op here. Checked: ray 2.60.0. Where the name is missing this does nothing."""
    try:
        from ray._private import utils

        original = utils.set_sigterm_handler
    except (ImportError, AttributeError) as err:
        log.debug("ray.init keeps its own SIGTERM handler: %s", err)
        yield
        return
    utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        utils.set_sigterm_handler = original
