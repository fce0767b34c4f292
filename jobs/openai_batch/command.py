"""The command line that runs a batch job: what a server (`runner serve`) submits as a Ray job's
entrypoint, and what a user types (`runner batch`)."""

from __future__ import annotations

from collections.abc import Iterable


def batch_argv(
    input_uri: str,
    output_uri: str,
    error_uri: str | None,
    output_dir: str,
    model: str,
    config_path: str | None = None,
    order: str = "input",
    overrides: Iterable[str] = (),
) -> list[str]:
    """`python -m runner batch ...` for one request file: the results to `output_uri` (and failed
    requests to `error_uri`, or into `output_uri` when None), the Parquet parts in `output_dir`,
    `overrides` as `--set KEY=VALUE` items after the rest (so they win)."""
    argv = ["python", "-m", "runner", "batch", "-i", input_uri, "-o", output_uri, "--model", model]
    argv += ["--output", output_dir, "--order", order]
    if error_uri is not None:
        argv += ["--errors", error_uri]
    if config_path is not None:
        argv += ["--config", config_path]
    for item in overrides:
        argv += ["--set", item]
    return argv
