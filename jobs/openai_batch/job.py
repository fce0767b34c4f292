"""The `batch` job's run: a `runner.orchestration.job.Job` with the batch stage and the batch's input; the results
files are written from the committed parts while the output directory's lease is still held."""

from __future__ import annotations

import logging

from jobs.openai_batch.config import BatchConfig
from runner.orchestration.job import Job, check_error_rate

log = logging.getLogger(__name__)


def run(
    cfg: BatchConfig, overwrite: bool = False, max_error_rate: float | None = None, retry_errors: bool = False
) -> dict:
    """Run the batch to completion, write its results files, and return the summary (`_job.json`)."""
    from jobs.openai_batch import results
    from jobs.openai_batch.requests import open_requests
    from jobs.openai_batch.stage import BatchStage

    planned: dict = {}

    def read(c: BatchConfig):
        source = open_requests(c.data)
        planned["total"] = source.total_rows
        return source

    def extra(job_dir) -> dict:
        counts = results.request_counts(job_dir.path)
        counts["total"] = max(planned.get("total", 0), counts["completed"] + counts["failed"])
        return {"kind": "openai_batch", results.TOTAL_KEY: counts["total"], "request_counts": counts}

    def write(_summary: dict) -> None:  # under the output's lease: no other driver writes meanwhile
        b = cfg.batch
        counts = results.write_results(cfg.output.path, b.output_file, b.error_file, b.order)
        log.info("wrote %s (%d completed, %d failed)", b.output_file, counts["completed"], counts["failed"])

    job = Job(cfg, stage=BatchStage, read=read, summary_extra=extra, on_done=write)
    summary = job.run(overwrite=overwrite, retry_errors=retry_errors)
    check_error_rate(summary, max_error_rate)
    return summary
