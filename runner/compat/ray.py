"""Ray: the actor table, Ray Data read-task metadata and actor-pool restart bounds, the files a job's
working directory ships, the process groups of a local Ray's processes."""

from __future__ import annotations

import logging
import os
import signal
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
    """While entered, each process Ray starts from this process (a local `ray.init`: GCS server, raylet,
    monitors; the raylet's agents share the raylet's group, and Ray puts its workers in groups of their
    own anyway) starts in a process group of its own, so a signal to the caller's process group
    (`kill -- -PGID`, a terminal's Ctrl-C) reaches the caller alone, which then shuts Ray down itself.
    Linux only; elsewhere a no-op. A signal to every process of a cgroup still reaches Ray's processes.

    Ray's kernel fate-sharing is kept: Ray's own `preexec_fn` (SIGINT blocked, `PR_SET_PDEATHSIG`)
    still runs in each child, after the new group is made, so the GCS server and raylet still die
    with the process that started them, SIGKILL included. Without kernel fate-sharing Ray cleans up
    with a reaper that kills its own process group instead, so then nothing changes.

    When the body raises (a signal while `ray.init` runs), the groups of the processes it started are
    killed: a `ray.init` that did not return leaves no node for `ray.shutdown` to stop, and fate-sharing
    ends the GCS server and raylet but not the raylet's agents, which outlive it by a minute or more.
    (Those started include a child forked just as the exception came: any new child of this process.)

    Why private: `ray.init` has no option for its processes' group. `ray._private.services.ConsolePopen`
    (a `subprocess.Popen` subclass) is what `start_ray_process` spawns each of them with
    (`ray._private.utils.detect_fate_sharing_support` says whether Ray fate-shares); while entered
    it is replaced by a subclass that calls `os.setpgid(0, 0)` in the child before the given
    `preexec_fn`, and put back on exit (a module global: whatever else starts Ray processes meanwhile
    gets the same). When the name is missing (a changed Ray): a debug line, and Ray's processes share
    the caller's group as before.
    Checked: ray 2.60.0."""
    if not sys.platform.startswith("linux"):
        yield
        return
    try:
        from ray._private import services, utils

        original = services.ConsolePopen
        kernel_fate_sharing = bool(utils.detect_fate_sharing_support())
    except (ImportError, AttributeError) as err:
        log.debug("cannot start Ray's processes in their own process group: %s", err)
        original = None
    else:
        if not kernel_fate_sharing:
            log.debug(
                "Ray's processes stay in this process group: its reaper (no kernel fate-sharing) needs it"
            )
            original = None
    if original is None:
        yield
        return

    started: set[int] = set()
    before = _children()

    class OwnGroupPopen(original):
        def __init__(self, *args, preexec_fn=None, **kwargs):
            def preexec() -> None:
                os.setpgid(0, 0)
                if preexec_fn is not None:
                    preexec_fn()

            super().__init__(*args, preexec_fn=preexec, **kwargs)
            started.add(self.pid)

    services.ConsolePopen = OwnGroupPopen
    try:
        yield
    except BaseException:
        # Also a child forked as the exception came, before its Popen returned (perhaps before its
        # `preexec_fn` made its group): every child this process has now and had not before.
        new = _children() - before
        for kill, target in [(os.kill, pid) for pid in new] + [(os.killpg, pid) for pid in started | new]:
            try:
                kill(target, signal.SIGKILL)
            except OSError:  # gone already
                pass
        raise
    finally:
        services.ConsolePopen = original


def _children() -> set[int]:
    """The pids of this process's children (read from /proc; none when it cannot be read)."""
    me, found = os.getpid(), set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == me:
            found.add(int(entry))
    return found


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
