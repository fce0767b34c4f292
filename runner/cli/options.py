"""Options several commands share, defined once (lighteval's shared option definitions)."""

from __future__ import annotations

import argparse


def add_common(p: argparse.ArgumentParser) -> None:
    """--verbose and --debug: every command has them."""
    p.add_argument(
        "--verbose", action="store_true", help="also show Ray's and libraries' logs (always in the log file)"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def add_address(p: argparse.ArgumentParser) -> None:
    """--address: the Ray dashboard of the cluster the job commands talk to."""
    p.add_argument(
        "--address",
        default=None,
        metavar="URL",
        help="Ray dashboard, e.g. http://HEAD:8265 (default: RAY_ADDRESS if it is one, else http://127.0.0.1:8265)",
    )


def add_set(
    p: argparse.ArgumentParser, help: str = "override a config value, e.g. --set sampling.max_new_tokens=64"
) -> None:
    """--set KEY.PATH=VALUE (repeatable), collected in `args.overrides`."""
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help=help
    )


def add_job_options(p: argparse.ArgumentParser, output_help: str = "") -> None:
    """The options of a command that runs a job from a config: --set, --output, --overwrite,
    --max-error-rate (then add_common)."""
    add_set(p)
    p.add_argument("--output", help="output directory (same as --set output.path=DIR)" + output_help)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the runner's own output files in the output directory",
    )
    p.add_argument(
        "--max-error-rate",
        type=fraction,
        default=None,
        metavar="F",
        help="fail (exit 1, after writing the output) when more than this fraction of rows are errors",
    )
    add_common(p)


def add_gate_arguments(p: argparse.ArgumentParser) -> None:
    """--max-drop / --fail-below, shared by `runner eval` and `runner compare`."""
    p.add_argument(
        "--max-drop",
        action="append",
        default=[],
        metavar="[TASK/]METRIC=X",
        help="fail (exit 1) when the metric fell by more than X from the baseline",
    )
    p.add_argument(
        "--fail-below",
        action="append",
        default=[],
        metavar="[TASK/]METRIC=X",
        help="fail (exit 1) when the metric is below X",
    )


def overrides(args: argparse.Namespace) -> list[str]:
    """The --set overrides, with --output as output.path."""
    return list(args.overrides) + ([f"output.path={args.output}"] if args.output else [])


def fraction(text: str) -> float:
    """An argparse type: a number between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1 (got {text})")
    return value
