"""The `generate` job: every row of a dataset -> its generation(s), in Parquet, via a Ray replica pool.

Order of work: everything that can be wrong with the config, the input or the output directory is
checked before Ray starts or a model loads; then rows already committed by an earlier run of the
same job are skipped; then output streams into atomic part files as the replicas produce it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from runner import cluster
from runner.config import JobConfig
from runner.demo_model import SIZES, is_demo
from runner.errors import ConfigError, JobFailed, OutputError
from runner.io.inputs import read_input
from runner.io.outputs import PartWriter, committed_ids, prepare_output_dir, read_summary, write_summary
from runner.progress import Progress
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


def check_previous_run(cfg: JobConfig, overwrite: bool) -> None:
    """Refuse to mix outputs of different configs in one directory."""
    previous = read_summary(cfg.output.path)
    if previous is None or overwrite or previous.get("config_hash") == cfg.result_hash():
        return
    differ = _differing_settings(previous.get("config", {}), cfg.model_dump(mode="json"))
    raise OutputError(
        f"output.path: {cfg.output.path} holds a job with different settings ({', '.join(differ) or 'unknown'}); "
        "pass --overwrite or choose another output directory"
    )


def _differing_settings(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for key in keys:
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differing_settings(a, b, name + ".")
        elif a != b and name.split(".")[0] in ("model", "data", "sampling"):
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
    """Run the job to completion and return its summary (also written to job.json)."""
    check_model_path(cfg.model.path)
    table = read_input(cfg.data)
    prepare_output_dir(cfg.output.path)
    check_previous_run(cfg, overwrite)
    if overwrite:
        PartWriter.remove_parts(cfg.output.path)
    todo, skipped = pending_rows(table, cfg.output.path)
    cluster.connect(cfg.ray)
    pool = cluster.plan_pool(cfg.placement, cluster.gpus_per_node())
    log.info(
        "%d rows to generate (%d already done), %d replica(s) x %d GPU",
        todo.num_rows,
        skipped,
        pool.replicas,
        pool.gpus_per_replica,
    )
    stats = JobStats(rows_skipped=skipped)
    writer = PartWriter(cfg.output.path, cfg.output.rows_per_file)
    with Progress(todo.num_rows) as progress:
        for batch in cluster.run_stage(todo, cfg, pool) if todo.num_rows else []:
            writer.write(batch)
            stats.add(batch)
            progress.update(batch.num_rows, stats)
    writer.close()
    summary = build_summary(cfg, stats, replicas=pool.replicas, gpus_per_replica=pool.gpus_per_replica)
    write_summary(cfg.output.path, summary)
    if max_error_rate is not None and stats.error_rate > max_error_rate:
        raise JobFailed(
            f"{stats.rows_error} of {stats.rows} rows failed ({stats.error_rate:.1%} > --max-error-rate {max_error_rate:.1%})"
        )
    return summary
