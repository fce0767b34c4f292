"""`runner status`: a job's state, from its output directory (any run, local or `s3://`...) or, for a
submitted job, from the cluster (by submission id or by its config) with its directory's state."""

from __future__ import annotations

import argparse
import json
import os

from runner.cli import JOB_COMMANDS, job_config_class, options


def add_parser(sub) -> None:
    p = sub.add_parser(
        "status",
        help="show a job's status: OUTPUT_DIR (local or URI), a submitted job's id or config, or all submitted jobs",
    )
    p.add_argument(
        "job",
        nargs="?",
        help="an output directory (path or URI), a submission id, or the job's config (its latest attempt)",
    )
    options.add_set(p, help="with a config: overrides that change its output path (others are not needed)")
    p.add_argument("--output", help="with a config: the --output it was submitted with")
    p.add_argument("--kind", choices=JOB_COMMANDS, default="run", help="with a config: its job kind")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    options.add_address(p)
    options.add_common(p)


def execute(args: argparse.Namespace) -> int:
    if args.job is not None and is_directory(args.job):
        return _print_directory(args.job, args.json)
    from runner.orchestration import submit

    client = submit.connect(args.address)
    if args.job is None:
        jobs = submit.ours(client)
    elif os.path.isfile(args.job):
        jobs = _attempts(client, args)
    else:
        jobs = [submit.info(client, args.job)]
    for details in jobs:
        _print_submitted(details, args.json)
    return 0


def is_directory(target: str) -> bool:
    """An output directory: a URI, a local directory, or a path that is not a file (a missing one is
    reported as such; a config is a file, a submission id has no `/`)."""
    if "://" in target or os.path.isdir(os.path.expanduser(target)):
        return True
    return not os.path.isfile(target) and (os.sep in target or target.startswith((".", "~")))


def _print_directory(path: str, as_json: bool) -> int:
    from runner.io.job_status import directory_status

    status = directory_status(path)
    print(json.dumps(status.as_dict()) if as_json else "\n".join(status.lines()))
    return 0


def _print_submitted(details, as_json: bool) -> None:
    from runner.orchestration import submit

    status = reachable_status((details.metadata or {}).get("output"))
    if as_json:
        entry = {"submission_id": details.submission_id, "status": str(details.status)}
        entry["metadata"] = details.metadata or {}
        print(json.dumps({**entry, "output": status.as_dict() if status else None}))
        return
    print(submit.describe(details))
    for line in status.lines() if status else []:
        print("  " + line)


def reachable_status(output: str | None):
    """The output directory's status when this machine can read it (shared storage), else None."""
    if not output:
        return None
    from runner.errors import RunnerError
    from runner.io.job_status import directory_status

    try:
        return directory_status(output)
    except (RunnerError, OSError):
        return None


def _attempts(client, args: argparse.Namespace) -> list:
    """The config's latest submission: matched by its output path, so only overrides that change the
    output need repeating; else by the settings key (`submit.job_key`), else by the config's name."""
    from runner.config import load_config
    from runner.orchestration import submit

    cfg = load_config(args.job, options.overrides(args), kind=job_config_class(args.kind))
    ours = submit.ours(client)
    meta = lambda j: j.metadata or {}  # noqa: E731
    name = os.path.basename(args.job)
    for match in (
        lambda j: meta(j).get("output") == cfg.output.path,
        lambda j: meta(j).get("runner_key") == submit.job_key(cfg),
        lambda j: os.path.basename(meta(j).get("config", "")) == name,
    ):
        found = [j for j in ours if match(j)]
        if found:
            return found[-1:]
    raise submit.ClusterError(
        f"{args.job}: no job with output {cfg.output.path} or this config was submitted to this cluster"
    )
