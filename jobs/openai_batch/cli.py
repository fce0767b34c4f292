"""`runner batch`: an OpenAI batch request file in, OpenAI batch output (and error) files out."""

from __future__ import annotations

import argparse
import json

from runner.cli import options


def add_parser(sub) -> None:
    p = sub.add_parser("batch", help="run an OpenAI batch request file (results in OpenAI's output format)")
    p.add_argument("config", nargs="?", default=None, help="job config (YAML; optional, as --config)")
    p.add_argument("--config", dest="config_option", metavar="JOB.yaml", help="job config (YAML)")
    p.add_argument("-i", "--input-file", metavar="IN", help="the request file (batch.input)")
    p.add_argument("-o", "--output-file", metavar="OUT", help="the output file (batch.output_file)")
    p.add_argument(
        "--errors",
        metavar="FILE",
        help="failed requests' lines go here (batch.error_file; default: into the output file)",
    )
    p.add_argument("--model", metavar="M", help="the base model (model.path)")
    p.add_argument(
        "--order",
        choices=["input", "any"],
        default=None,
        help="output lines in request-file order (default) or as committed (batch.order)",
    )
    p.add_argument(
        "--retry-errors",
        action="store_true",
        help="run again the committed requests that failed for the engine's reasons",
    )
    options.add_job_options(p, output_help="; default: the output file's name with .parts")


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The short options as config overrides (JSON values: a path is never read as YAML)."""
    given = {
        "batch.input": args.input_file,
        "batch.output_file": args.output_file,
        "batch.error_file": args.errors,
        "batch.order": args.order,
        "model.path": args.model,
    }
    return [f"{key}={json.dumps(value)}" for key, value in given.items() if value is not None]


def config_class() -> type:
    """The batch job's config model."""
    from jobs.openai_batch.config import BatchConfig

    return BatchConfig


def execute(args: argparse.Namespace) -> int:
    from jobs.openai_batch.job import run
    from runner.config import load_config
    from runner.errors import ConfigError
    from runner.io.summary import one_line

    if args.config and args.config_option:
        raise ConfigError("config: give it once (positional or --config)")
    config = args.config or args.config_option
    cfg = load_config(config, flag_overrides(args) + options.overrides(args), kind=config_class())
    summary = run(
        cfg, overwrite=args.overwrite, max_error_rate=args.max_error_rate, retry_errors=args.retry_errors
    )
    print(one_line(summary, cfg.output.path))
    counts = summary["request_counts"]
    print(f"results: {cfg.batch.output_file} ({counts['completed']} completed, {counts['failed']} failed)")
    return 0
