"""`runner stop`: stop a submitted job like SIGTERM (rows committed, `_job.json` interrupted)."""

from __future__ import annotations

import argparse

from runner.cli import options


def add_parser(sub) -> None:
    p = sub.add_parser("stop", help="stop a submitted job (resumable: submit it again)")
    p.add_argument("job", help="submission id")
    p.add_argument("--no-wait", action="store_true", help="return once the stop is requested")
    options.add_address(p)
    options.add_common(p)


def execute(args: argparse.Namespace) -> int:
    from runner.orchestration import submit

    client = submit.connect(args.address)
    details = submit.info(client, args.job)
    if str(details.status) in submit.TERMINAL:
        print(f"{submit.describe(details)} (already ended)")
        return 0
    client.stop_job(args.job)
    if not args.no_wait:
        details = submit.wait(client, args.job, timeout_s=submit.STOP_GRACE_S + 30)
    print(submit.describe(details))
    return 0
