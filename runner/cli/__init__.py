"""Command line: `runner run | eval | batch | export | plan | compare | report | submit | status | logs | stop | list | serve`.

Also `python -m runner`.

One small module per command, each with `add_parser(sub)` and `execute(args)`; heavy imports happen
inside `execute` so `--help` is instant. `COMMANDS` is the registry: command name -> dotted path of its
module, imported by name (`command`). The library's own commands live here in `runner.cli`; a job
kind's commands live in its package under `jobs/` (`jobs.generate.cli`: `run`; `jobs.eval.cli`:
`eval`, `compare`, `report`; `jobs.openai_batch.cli`: `batch`; `jobs.openai_batch.export`: `export`; `jobs.openai_batch.server.cli`: `serve`),
so `runner` names a job kind only in this table and never imports one.
A command that runs a job kind also has `config_class()`, the kind's config model (`JOB_COMMANDS`:
what `runner submit --kind` and `runner status --kind` offer).
"""

from __future__ import annotations

import argparse
import importlib
import traceback
from types import ModuleType

from runner import logs
from runner.errors import ConfigError, first_line, root_cause
from runner.orchestration import secret_env, startup_trace
from runner.orchestration.signals import Interrupted, exit_within

# After a signal stopped a job (its output, summary and lease final), the most Ray's shutdown may take:
# a scheduler that signalled the whole process group killed Ray too, and a dead Ray can hang a minute.
EXIT_GRACE_S = 5.0

COMMANDS = {
    "run": "jobs.generate.cli",
    "eval": "jobs.eval.cli.eval",
    "batch": "jobs.openai_batch.cli",
    "export": "jobs.openai_batch.export",
    "plan": "runner.cli.plan",
    "compare": "jobs.eval.cli.compare",
    "report": "jobs.eval.cli.report",
    "submit": "runner.cli.submit",
    "status": "runner.cli.status",
    "logs": "runner.cli.job_logs",
    "stop": "runner.cli.stop",
    "list": "runner.cli.list",
    "serve": "jobs.openai_batch.server.cli",
}
JOB_COMMANDS = ("run", "eval", "batch")


def command(name: str) -> ModuleType:
    """The module of command `name` (one of `COMMANDS`)."""
    return importlib.import_module(COMMANDS[name])


def job_config_class(name: str) -> type:
    """The config model of the job kind that command `name` (one of `JOB_COMMANDS`) runs."""
    return command(name).config_class()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        command(name).add_parser(sub)  # each adds runner.cli.options.add_common: --verbose, --debug
    return parser


def main(argv: list[str] | None = None) -> int:
    startup_trace.mark("driver: CLI imported", at_exit="driver: exit (after Ray's shutdown)")
    args = build_parser().parse_args(argv)
    logs.setup(verbose=getattr(args, "verbose", False), debug=getattr(args, "debug", False))
    try:
        secret_env.apply()  # a driver on a cluster: --secret-file / --env-from-cluster of its submission
        return command(args.command).execute(args)
    except KeyboardInterrupt as err:  # a bare one is Ctrl-C outside a job's signal handling
        name = str(err) if isinstance(err, Interrupted) else "SIGINT"
        print(
            f"interrupted ({name}): output committed so far is kept; run the same command again to resume",
            file=logs.terminal(),
        )
        code = getattr(err, "exit_code", 130)
        if argv is None:  # the process's own command line: the output is final, exit within seconds
            exit_within(code, EXIT_GRACE_S)
        return code
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
