"""The `eval` job: every task's rows -> generations or choice log-likelihoods -> scores, in Parquet,
plus `_metrics.json` with each task's metrics.

The lifecycle (preflight, resume by id, part files, `_job.json`) is `runner.orchestration.job.Job`, shared with
`generate`; what is eval's own is its input (every task's rows in one table: one Ray Data pass, one
replica pool, the model loaded once), its stage (`jobs.eval.stage.EvalStage`) and the metrics.
"""

from __future__ import annotations

from collections.abc import Callable

from jobs.eval.config import EvalConfig
from jobs.eval.metrics import metrics_document, model_revision, write_metrics
from jobs.eval.stage import EvalStage
from jobs.eval.tasks import read_tasks
from runner.orchestration.job import Job, check_error_rate


def run(
    cfg: EvalConfig,
    overwrite: bool = False,
    max_error_rate: float | None = None,
    record: Callable[[dict], None] | None = None,
) -> dict:
    """Run the eval to completion; write and return its metrics document (`_metrics.json`).

    `record(document)` (a suite's history) is called once the metrics are written, before
    `--max-error-rate` is checked: a run that fails it is still on record."""
    written: dict = {}

    def write(summary: dict) -> None:  # under the output's lease: no other driver writes meanwhile
        written["document"] = metrics_document(cfg, cfg.output.path, summary, model_revision(cfg.model))
        write_metrics(cfg.output.path, written["document"])

    job = Job(
        cfg, stage=EvalStage, read=read_tasks, summary_extra=lambda _dir: {"kind": "eval"}, on_done=write
    )
    summary = job.run(overwrite=overwrite)
    document = written["document"]
    if record is not None:
        record(document)
    check_error_rate(summary, max_error_rate)
    return document
