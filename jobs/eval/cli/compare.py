"""`runner compare BASE NEW` (or `--suite DIR`: its latest run against the one before): per task and
metric both values, the difference, its paired standard error, flipped rows; exit 1 on a failed gate."""

from __future__ import annotations

import argparse

from runner.cli import options


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare two eval runs and apply regression gates")
    p.add_argument("base", nargs="?", help="base run directory")
    p.add_argument("new", nargs="?", help="new run directory")
    p.add_argument("--suite", metavar="DIR", help="compare the suite's latest run with the run before it")
    options.add_gate_arguments(p)
    options.add_common(p)


def execute(args: argparse.Namespace) -> int:
    from jobs.eval import compare
    from jobs.eval.suite import Suite
    from runner.errors import ConfigError

    gates = compare.parse_gates(args.max_drop, args.fail_below)
    if args.suite:
        if args.base or args.new:
            raise ConfigError("compare: give BASE and NEW, or --suite DIR, not both")
        base, new = Suite(args.suite).latest_pair()
    else:
        if not (args.base and args.new):
            raise ConfigError("compare: give BASE and NEW run directories, or --suite DIR")
        base, new = args.base, args.new
    return compare.gate_command(base, new, gates)
