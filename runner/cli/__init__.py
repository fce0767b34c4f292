"""Command line: `runner run | eval | batch | plan | compare | report | submit | status | logs | stop | list`.

Also `python -m runner`.

One small module per command; heavy imports happen inside the command so `--help` is instant.
"""

from __future__ import annotations

import argparse
import traceback

from runner import logs, secret_env
from runner.cli import batch as batch_command
from runner.cli import compare as compare_command
from runner.cli import eval as eval_command
from runner.cli import job_logs as logs_command
from runner.cli import list as list_command
from runner.cli import plan as plan_command
from runner.cli import report as report_command
from runner.cli import run as run_command
from runner.cli import status as status_command
from runner.cli import stop as stop_command
from runner.cli import submit as submit_command
from runner.errors import ConfigError, first_line, root_cause
from runner.signals import Interrupted

COMMANDS = {
    "run": run_command,
    "eval": eval_command,
    "plan": plan_command,
    "compare": compare_command,
    "report": report_command,
    "submit": submit_command,
    "status": status_command,
    "logs": logs_command,
    "stop": stop_command,
    "list": list_command,
    "batch": batch_command,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)  # each adds runner.cli.options.add_common: --verbose, --debug
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(verbose=getattr(args, "verbose", False), debug=getattr(args, "debug", False))
    try:
        secret_env.apply()  # a driver on a cluster: --secret-file / --env-from-cluster of its submission
        return COMMANDS[args.command].execute(args)
    except KeyboardInterrupt as err:  # a bare one is Ctrl-C outside a job's signal handling
        name = str(err) if isinstance(err, Interrupted) else "SIGINT"
        print(
            f"interrupted ({name}): output committed so far is kept; run the same command again to resume",
            file=logs.terminal(),
        )
        return getattr(err, "exit_code", 130)
    except Exception as err:  # noqa: BLE001 - every failure becomes one line unless --debug
        if getattr(args, "debug", False):
            # To the terminal: descriptor 2 may be the log file now (runner.logs).
            traceback.print_exc(file=logs.terminal())
            raise
        cause = root_cause(err) or err
        # A config's problems come all at once, one line each (runner.config.problems).
        lines = str(cause).splitlines() if isinstance(cause, ConfigError) else []
        for message in lines or [first_line(cause, type(cause).__name__)]:
            print(f"error: {message}", file=logs.terminal())
        return getattr(cause, "exit_code", 1)
