"""`runner run`: run a job described by a YAML config."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a generation job")
    p.add_argument("config", help="job config (YAML)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config value, e.g. --set sampling.max_new_tokens=64",
    )
    p.add_argument("--output", help="output directory (same as --set output.path=DIR)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the runner's own output files in the output directory",
    )
    p.add_argument(
        "--max-error-rate",
        type=_fraction,
        default=None,
        metavar="F",
        help="fail (exit 1, after writing the output) when more than this fraction of rows are errors",
    )
    p.add_argument(
        "--retry-errors",
        action="store_true",
        help="generate again the committed rows that failed for the engine's reasons (error_kind engine)",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1 (got {text})")
    return value


def execute(args: argparse.Namespace) -> int:
    from jobs.generate import run
    from runner.config import load_config
    from runner.summary import one_line

    overrides = list(args.overrides) + ([f"output.path={args.output}"] if args.output else [])
    cfg = load_config(args.config, overrides)
    summary = run(
        cfg, overwrite=args.overwrite, max_error_rate=args.max_error_rate, retry_errors=args.retry_errors
    )
    print(one_line(summary, cfg.output.path))
    return 0
