"""`runner serve`: an OpenAI-compatible Batch API whose batches run as jobs on a Ray cluster (the
command of the openai_batch job kind's server; `runner/cli` maps the name to this module)."""

from __future__ import annotations

import argparse

from runner.cli import options


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve OpenAI's Batch API (files + batches) over jobs on a Ray cluster")
    p.add_argument(
        "--storage",
        required=True,
        metavar="DIR_OR_URI",
        help="where files and batches live (shared with the cluster)",
    )
    p.add_argument(
        "--config",
        action="append",
        required=True,
        metavar="JOB.yaml",
        help="a job config: a model this server serves (repeatable)",
    )
    options.add_address(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--api-keys",
        metavar="FILE",
        help="keys file, one `KEY OWNER [admin]` a line (else RUNNER_SERVE_API_KEYS)",
    )
    p.add_argument(
        "--working-dir",
        default=".",
        metavar="DIR",
        help="shipped to the cluster with each job; holds the configs (default: .)",
    )
    p.add_argument(
        "--max-file-mb", type=float, default=200, metavar="MB", help="largest upload (default: 200, OpenAI's)"
    )
    p.add_argument(
        "--max-requests",
        type=int,
        default=50_000,
        metavar="N",
        help="most requests a file may hold (default: 50,000, OpenAI's)",
    )
    p.add_argument(
        "--poll-seconds",
        type=float,
        default=2.0,
        metavar="S",
        help="how often batches are advanced (default: 2)",
    )
    options.add_common(p)


def execute(args: argparse.Namespace) -> int:
    from jobs.openai_batch.server.auth import load_keys
    from jobs.openai_batch.server.files import Limits
    from jobs.openai_batch.server.serve import build, serve
    from runner.errors import ConfigError

    if args.max_file_mb <= 0 or args.max_requests < 1 or args.poll_seconds <= 0:
        raise ConfigError("--max-file-mb, --max-requests and --poll-seconds must be positive")
    keys = load_keys(args.api_keys)
    limits = Limits(max_file_bytes=int(args.max_file_mb * 1024 * 1024), max_requests=args.max_requests)
    app = build(args.storage, keys, args.config, args.address, args.working_dir, limits, args.poll_seconds)
    serve(app, args.host, args.port)
    return 0
