"""`runner report SUITE_DIR -o report.html`: one static HTML page of a suite's history."""

from __future__ import annotations

import argparse

from runner.cli import options


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write a static HTML report of an eval suite's runs")
    p.add_argument("suite", help="suite directory (written by runner eval --suite)")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write (default report.html)")
    options.add_common(p)


def execute(args: argparse.Namespace) -> int:
    from jobs.eval.report import write_report

    write_report(args.suite, args.output)
    print(f"wrote {args.output}")
    return 0
