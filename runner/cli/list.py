"""`runner list`: this project's jobs on the cluster (from their submission metadata), with the rows
each has done where this machine can read its output directory."""

from __future__ import annotations

import argparse

from runner.cli import options


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list this project's jobs on a Ray cluster, with rows done")
    options.add_address(p)
    options.add_common(p)


def execute(args: argparse.Namespace) -> int:
    from runner.cli.status import reachable_status
    from runner.orchestration import submit

    for details in submit.ours(submit.connect(args.address)):
        status = reachable_status((details.metadata or {}).get("output"))
        print(submit.describe(details) + (f"  {rows_done(status)}" if status else ""))
    return 0


def rows_done(status) -> str:
    total = f"/{status.rows_total}" if status.rows_total is not None else ""
    return f"rows={status.rows_done}{total} errors={status.rows_error} ({status.state})"
