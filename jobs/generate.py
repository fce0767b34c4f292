"""The `generate` job: every row of a dataset -> its generation(s), in Parquet, via a Ray replica pool.

Order of work: everything that can be wrong with the config, the input or the output directory is
checked before Ray starts or a model loads; then rows already committed by an earlier run of the
same job are skipped; then output streams into atomic part files as the replicas produce it.

Resume is by row id, not Ray Data's checkpointing (`DataContext.checkpoint_config`): Ray's only
applies to a plan that reads from a datasource and ends in a Ray write sink (elsewhere it is
silently disabled with a warning), while this job streams from an in-memory table to the driver so
that part files are committed atomically, one writer, with a summary next to them. Ray's would also
need its own checkpoint directory on shared storage and write files under names we do not control.
Ids give exactly-once here: a row is done iff its id is in a committed part.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from runner import cluster
from runner.config import RESULT_SECTIONS, JobConfig
from runner.demo_model import SIZES, is_demo
from runner.errors import ConfigError, JobFailed, OutputError
from runner.io.inputs import read_input
from runner.io.outputs import (
    PartWriter,
    committed_ids,
    error_counts,
    has_parts,
    prepare_output_dir,
    read_summary,
    write_summary,
)
from runner.progress import Progress
from runner.signals import Interrupted, StopSignals
from runner.summary import JobStats, build_summary

log = logging.getLogger(__name__)


def check_model_path(path: str) -> None:
    """A model path that is clearly local must exist; hub ids are left to transformers."""
    if is_demo(path):
        if path.split(":", 1)[1] not in SIZES:
            raise ConfigError(
                f"model.path: unknown demo model {path!r} (known: demo:{', demo:'.join(SIZES)})"
            )
        return
    local = Path(path).expanduser()
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1 or local.exists()
    if looks_local and not (local / "config.json").is_file():
        raise ConfigError(f"model.path: {path!r} is not a directory holding a model (no config.json)")


def check_demands(cfg: JobConfig) -> None:
    """On a local Ray the replicas run on this machine: a kernel or quantization the config demands
    and this machine cannot run fails here, in a second, not in every replica after start-up.

    On a cluster the GPU nodes may have what the driver's machine lacks; there the replica raises
    the same error. Needs torch, so it is only imported when the config demands something."""
    demands = cfg.model.attention == "flash_attention_2" or cfg.model.quantization.mode != "none"
    if cfg.ray.address or not demands:
        return
    from runner.engine.loading import check_settings

    check_settings(cfg.model, cfg.placement)


def check_previous_run(cfg: JobConfig, overwrite: bool) -> None:
    """Refuse to mix outputs of different configs in one directory, or to touch parts not ours."""
    path = cfg.output.path
    previous = read_summary(path)
    if previous is None:
        if has_parts(path):
            # Every run writes _job.json before its first part: these parts are someone else's.
            raise OutputError(
                f"output.path: {path} holds part files but no _job.json, so not a job of this runner; "
                "choose another output directory"
            )
        return
    if overwrite or previous.get("config_hash") == cfg.result_hash():
        return
    differ = _differing_settings(previous.get("config", {}), cfg.model_dump(mode="json"))
    raise OutputError(
        f"output.path: {path} holds a job with different settings ({', '.join(differ) or 'unknown'}); "
        "pass --overwrite or choose another output directory"
    )


def _differing_settings(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for key in keys:
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differing_settings(a, b, name + ".")
        elif a != b and name.split(".")[0] in RESULT_SECTIONS:
            out.append(name)
    return out


def pending_rows(table: pa.Table, path: str) -> tuple[pa.Table, int]:
    """Input rows whose ids are not yet committed in the output; and how many were."""
    done = committed_ids(path)
    if not done:
        return table, 0
    mask = pc.invert(pc.is_in(table.column("id"), value_set=pa.array(sorted(done), pa.string())))
    todo = table.filter(mask)
    return todo, table.num_rows - todo.num_rows


def run(cfg: JobConfig, overwrite: bool = False, max_error_rate: float | None = None) -> dict:
    """Run the job to completion and return its summary (also written to ``_job.json``).

    SIGINT / SIGTERM raise `Interrupted` after committing what is complete; rerunning resumes.
    """
    with StopSignals() as signals:
        table = preflight(cfg, overwrite)
        cluster.connect(cfg.ray)
        pool = cluster.plan_pool(cfg.placement, cluster.gpus_per_node())
        if overwrite:  # only now, so a config that fails its checks destroys nothing
            removed = PartWriter.remove_parts(cfg.output.path)
            log.info("--overwrite: removed %d file(s) of the previous run", len(removed))
        todo, skipped = pending_rows(table, cfg.output.path)
        log.info(
            "%d rows to generate (%d already done), %d replica(s) x %d GPU",
            todo.num_rows,
            skipped,
            pool.replicas,
            pool.gpus_per_replica,
        )
        summary = _generate(cfg, pool, todo, JobStats(rows_skipped=skipped), signals)
    _check_error_rate(summary, max_error_rate)
    return summary


def preflight(cfg: JobConfig, overwrite: bool) -> pa.Table:
    """Every check that needs no cluster: model path, input and its columns, output directory."""
    check_model_path(cfg.model.path)
    check_demands(cfg)
    table = read_input(cfg.data)
    prepare_output_dir(cfg.output.path)
    check_previous_run(cfg, overwrite)
    return table


def _generate(
    cfg: JobConfig, pool: cluster.Pool, todo: pa.Table, stats: JobStats, signals: StopSignals
) -> dict:
    """Stream the stage's output into part files; the summary records how it ended, always."""
    restarts = cluster.RestartCounter()

    def finish(status: str) -> dict:
        summary = _summary(cfg, pool, stats, status, restarts.count())
        with signals.hold():
            write_summary(cfg.output.path, summary)
        return summary

    finish("running")  # before the first part: a killed run still says which config wrote them
    writer = PartWriter(cfg.output.path, cfg.output.rows_per_file)
    try:
        with Progress(todo.num_rows) as progress:
            for batch in cluster.results(todo, cfg, pool) if todo.num_rows else []:
                with signals.hold():
                    writer.write(batch)
                stats.add(batch)
                progress.update(batch.num_rows, stats)
    except BaseException as err:
        _commit_rest(writer, signals)
        finish("interrupted" if isinstance(err, Interrupted) else "failed")
        raise
    _commit_rest(writer, signals)
    return finish("done")


def _commit_rest(writer: PartWriter, signals: StopSignals) -> None:
    # Buffered rows are finished generations: commit them, so a rerun does not redo them.
    with signals.hold():
        writer.close()


def _summary(cfg: JobConfig, pool: cluster.Pool, stats: JobStats, status: str, restarts: int | None) -> dict:
    rows, errors = error_counts(cfg.output.path)
    return build_summary(
        cfg,
        stats,
        status=status,
        replicas=pool.replicas,
        gpus_per_replica=pool.gpus_per_replica,
        replica_restarts=restarts,
        output_rows=rows,
        output_rows_error=errors,
    )


def _check_error_rate(summary: dict, max_error_rate: float | None) -> None:
    """Over every row in the output, earlier runs of a resumed job included."""
    rows, errors = summary["output_rows"], summary["output_rows_error"]
    rate = errors / rows if rows else 0.0
    if max_error_rate is not None and rate > max_error_rate:
        raise JobFailed(
            f"{errors} of {rows} rows failed ({rate:.1%} > --max-error-rate {max_error_rate:.1%}); "
            "the output is written"
        )
