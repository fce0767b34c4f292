"""`runner export`: write a batch job's OpenAI output (and error) files from its committed parts."""

from __future__ import annotations

import argparse

from runner.cli import options


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a batch job directory's OpenAI results files from its parts")
    p.add_argument("directory", help="the job directory (output.path of a `runner batch` job)")
    p.add_argument("-o", "--output-file", metavar="OUT", help="default: the job's batch.output_file")
    p.add_argument(
        "--errors", metavar="FILE", help="failed requests' lines (default: the job's batch.error_file)"
    )
    p.add_argument("--order", choices=["input", "any"], default=None, help="default: the job's batch.order")
    options.add_common(p)


def execute(args: argparse.Namespace) -> int:
    from jobs.openai_batch.results import write_results
    from runner.errors import ConfigError
    from runner.io.jobdir import JobDir

    summary = JobDir(args.directory).summary()
    if summary is None or summary.get("kind") != "openai_batch":
        kind = "no _job.json" if summary is None else f"kind {summary.get('kind', 'generate')}"
        raise ConfigError(f"directory: {args.directory} is not a batch job's directory ({kind})")
    batch = summary["config"]["batch"]
    output = args.output_file or batch["output_file"]
    errors = args.errors if args.errors is not None else batch.get("error_file")
    counts = write_results(args.directory, output, errors, args.order or batch.get("order", "input"))
    if summary.get("status") != "done":
        print(f"note: the job is {summary.get('status')}: the files hold the requests committed so far")
    print(f"wrote {output} ({counts['completed']} completed, {counts['failed']} failed of {counts['total']})")
    return 0
