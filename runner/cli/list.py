"""`runner list`: this project's jobs on the cluster (from their submission metadata)."""

from __future__ import annotations

import argparse

from runner.cli import options


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list this project's jobs on a Ray cluster")
    options.add_address(p)
    options.add_common(p)


def execute(args: argparse.Namespace) -> int:
    from runner import submit

    for details in submit.ours(submit.connect(args.address)):
        print(submit.describe(details))
    return 0
