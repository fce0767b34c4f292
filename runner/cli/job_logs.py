"""`runner logs`: a submitted job's driver log (progress lines, errors, the summary)."""

from __future__ import annotations

import argparse

from runner.cli import options


def add_parser(sub) -> None:
    p = sub.add_parser("logs", help="print a submitted job's log")
    p.add_argument("job", help="submission id")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    options.add_address(p)
    options.add_common(p)


def execute(args: argparse.Namespace) -> int:
    from runner.orchestration import submit

    client = submit.connect(args.address)
    submit.info(client, args.job)  # an unknown id: one line, exit 2
    if args.follow:
        submit.follow(client, args.job)
    else:
        print(client.get_job_logs(args.job), end="")
    return 0
