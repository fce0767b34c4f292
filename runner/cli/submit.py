"""`runner submit`: run a job on a Ray cluster through Ray's Job Submission API."""

from __future__ import annotations

import argparse

from runner.cli import JOB_COMMANDS, job_config_class, options


def add_parser(sub) -> None:
    p = sub.add_parser("submit", help="submit a job to a Ray cluster (attaches when it is already running)")
    p.add_argument("config", help="job config (YAML), inside the working directory")
    options.add_address(p)
    p.add_argument("--kind", choices=JOB_COMMANDS, default="run", help="the job's command (default: run)")
    p.add_argument("--no-wait", action="store_true", help="print the submission id and return")
    p.add_argument(
        "--working-dir", default=".", metavar="DIR", help="shipped to the cluster (default: this directory)"
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="environment variable for the job (a bare NAME takes its value from here); repeatable. The value "
        "is stored in the job's description (runtime_env), readable by anyone with access to the cluster's "
        "job API: pass secrets with --env-from-cluster or --secret-file",
    )
    p.add_argument(
        "--env-from-cluster",
        action="append",
        default=[],
        metavar="NAME",
        help="a variable already set where the cluster's Ray runs (exported before `ray start` on every node, "
        "or from a Kubernetes Secret); only its name is sent, the driver checks it is set; repeatable",
    )
    p.add_argument(
        "--secret-file",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="set NAME on the driver and every worker from the file PATH on storage every node reads; only "
        "the name and path are sent; repeatable",
    )
    p.add_argument(
        "--pip",
        action="append",
        default=[],
        metavar="SPEC",
        help="pip requirement installed for the job (runtime_env pip), e.g. hf-batch-runner==0.1.0",
    )
    options.add_job_options(p)


def execute(args: argparse.Namespace) -> int:
    from runner.config import load_config
    from runner.logs import terminal
    from runner.orchestration import submit

    cfg = load_config(args.config, options.overrides(args), kind=job_config_class(args.kind))
    sub = submit.plan(
        args.config,
        cfg,
        _job_args(args),
        args.kind,
        args.working_dir,
        env=args.env,
        pip=args.pip,
        env_from_cluster=args.env_from_cluster,
        secret_files=args.secret_file,
    )
    for name in (item.partition("=")[0] for item in args.env):
        print(
            f"note: --env {name}: its value is in the job's description (runtime_env), readable through the "
            "cluster's job API; for a secret use --env-from-cluster or --secret-file",
            file=terminal(),
        )
    print(submit.shipped(args.working_dir).line(), file=terminal(), flush=True)
    client = submit.connect(args.address)
    sid, attached = submit.submit(client, sub)
    verb = "attached to the running job" if attached else "submitted"
    print(f"{verb} {sid} (runner logs {sid} --follow; runner stop {sid})", file=terminal(), flush=True)
    if args.no_wait:
        print(sid)
        return 0
    try:
        submit.follow(client, sid)
    except KeyboardInterrupt:
        print(f"detached: {sid} keeps running on the cluster (runner stop {sid})", file=terminal())
        return 130
    details = submit.wait(client, sid)
    print(submit.describe(details), file=terminal())
    return submit.exit_code(details)


def _job_args(args: argparse.Namespace) -> list[str]:
    """The job options to pass on to the driver's command line (the config is resolved there again)."""
    out = [item for value in options.overrides(args) for item in ("--set", value)]
    if args.overwrite:
        out.append("--overwrite")
    if args.max_error_rate is not None:
        out += ["--max-error-rate", str(args.max_error_rate)]
    return out
