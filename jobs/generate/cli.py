"""`runner run`: run a job described by a YAML config."""

from __future__ import annotations

import argparse

from runner.cli import options
from runner.orchestration import startup_trace


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a generation job")
    p.add_argument("config", help="job config (YAML)")
    p.add_argument(
        "--retry-errors",
        action="store_true",
        help="generate again the committed rows that failed for the engine's reasons (error_kind engine)",
    )
    options.add_job_options(p)


def config_class() -> type:
    """The generate job's config model."""
    from runner.config import JobConfig

    return JobConfig


def execute(args: argparse.Namespace) -> int:
    from jobs.generate.job import run
    from runner.config import load_config
    from runner.io.summary import one_line

    cfg = load_config(args.config, options.overrides(args), kind=config_class())
    startup_trace.mark("driver: config loaded")
    summary = run(
        cfg, overwrite=args.overwrite, max_error_rate=args.max_error_rate, retry_errors=args.retry_errors
    )
    startup_trace.mark("driver: job done (summary written)")
    print(one_line(summary, cfg.output.path))
    return 0
