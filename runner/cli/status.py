"""`runner status`: a submitted job's state on the cluster (by id, or by its config)."""

from __future__ import annotations

import argparse
import os

from runner.cli import JOB_COMMANDS, job_config_class, options


def add_parser(sub) -> None:
    p = sub.add_parser("status", help="show a submitted job's status (by submission id or config)")
    p.add_argument("job", nargs="?", help="submission id, or the job's config (its latest attempt)")
    options.add_set(p, help="with a config: the same overrides it was submitted with")
    p.add_argument("--output", help="with a config: the --output it was submitted with")
    p.add_argument("--kind", choices=JOB_COMMANDS, default="run", help="with a config: its job kind")
    options.add_address(p)
    options.add_common(p)


def execute(args: argparse.Namespace) -> int:
    from runner import submit

    client = submit.connect(args.address)
    if args.job is None:
        jobs = submit.ours(client)
    elif os.path.isfile(args.job):
        jobs = _attempts(client, args)
    else:
        jobs = [submit.info(client, args.job)]
    for details in jobs:
        print(submit.describe(details))
    return 0


def _attempts(client, args: argparse.Namespace) -> list:
    from runner import submit
    from runner.config import load_config

    cfg = load_config(args.job, options.overrides(args), kind=job_config_class(args.kind))
    key = submit.job_key(cfg)
    attempts = submit.attempts_of(client, key)
    if not attempts:
        raise submit.ClusterError(f"{args.job}: this job was never submitted to this cluster (key {key})")
    return attempts[-1:]
