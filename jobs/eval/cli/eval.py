"""`runner eval`: run an evaluation (one task or a `tasks:` list), write metrics, optionally gate."""

from __future__ import annotations

import argparse

from runner.cli import options


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="run an evaluation job and score it")
    p.add_argument("config", help="eval config (YAML): a generate config plus scoring, or tasks")
    p.add_argument("--suite", metavar="DIR", help="record the run in a suite: DIR/runs/NAME, latest, history")
    p.add_argument(
        "--run-name",
        default=None,
        metavar="TEMPLATE",
        help="suite run name; {utc}, {model}, {config_hash} are filled in (default: {utc:%%Y%%m%%dT%%H%%M%%SZ})",
    )
    p.add_argument("--baseline", metavar="RUN", help="compare with this run directory and apply the gates")
    options.add_gate_arguments(p)
    options.add_job_options(p, output_help="; not with --suite")


def config_class() -> type:
    """The eval job's config model."""
    from jobs.eval.config import EvalConfig

    return EvalConfig


def execute(args: argparse.Namespace) -> int:
    from jobs.eval import compare, suite
    from jobs.eval.job import run
    from runner.config import load_config
    from runner.errors import ConfigError

    if args.suite and args.output:
        raise ConfigError("--output: a suite run goes to SUITE/runs/NAME; pass --suite or --output, not both")
    gates = compare.parse_gates(args.max_drop, args.fail_below)
    if args.max_drop and not (args.baseline or args.suite):
        raise ConfigError("--max-drop: needs a baseline (--baseline RUN, or --suite DIR for its latest run)")
    cfg = load_config(args.config, options.overrides(args), kind=config_class())
    # A gate on a metric no task reports is a typo: say so now, not after the whole eval has run.
    compare.check_gates(gates, [(t.name, m) for t in cfg.task_list() for m in t.scoring.metrics])
    book = suite.Suite(args.suite) if args.suite else None
    baseline = args.baseline or (book.latest() if book and args.max_drop else None)
    if book:
        cfg.output.path = str(book.run_dir(cfg, args.run_name))
    record = (lambda document: book.record(cfg.output.path, document)) if book else None
    document = run(cfg, overwrite=args.overwrite, max_error_rate=args.max_error_rate, record=record)
    print(compare.metrics_table(document, cfg.output.path))
    if gates.any or args.baseline:
        return compare.gate_command(baseline, cfg.output.path, gates, record=True)
    return 0
