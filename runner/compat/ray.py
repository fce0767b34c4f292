"""Ray: the actor table, Ray Data read-task metadata and actor-pool restart bounds, the files a job's
working directory ships."""

from __future__ import annotations

import logging

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
