"""The `generate` job: every row of a dataset -> its generation(s), in Parquet, via a Ray replica pool.

The lifecycle (preflight, resume, part files, summary) is `runner.orchestration.job.Job`, shared with the other job
kinds; what is generate's own is the stage its replicas run (`jobs.generate.stage.GenerationStage`) and
its input (the rows of `data`).
"""

from __future__ import annotations

from jobs.generate.stage import GenerationStage
from runner.config import JobConfig
from runner.orchestration.job import Job


def run(
    cfg: JobConfig, overwrite: bool = False, max_error_rate: float | None = None, retry_errors: bool = False
) -> dict:
    """Run the job to completion and return its summary (also written to ``_job.json``)."""
    job = Job(cfg, stage=GenerationStage)
    return job.run(overwrite=overwrite, max_error_rate=max_error_rate, retry_errors=retry_errors)
