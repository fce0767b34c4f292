"""Loading a config: YAML plus ``--set a.b=c`` overrides, validated into one job kind's model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from runner.config.job import JobConfig
from runner.errors import ConfigError, first_line


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` overrides; values are parsed as YAML scalars (``3``, ``true``, ``[a, b]``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return tree


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if first["type"] == "missing":
        return f"{where}: required field is missing"
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    return f"{where}: {msg}{shown}"


def build_config(tree: dict, kind: type[JobConfig] = JobConfig) -> JobConfig:
    """Validate a plain dict into a JobConfig (or a job kind's subclass), raising ConfigError with one line."""
    try:
        return kind.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, kind: type[JobConfig] = JobConfig
) -> JobConfig:
    """Read a YAML config (or none) and apply overrides; `kind` is the job kind's config class."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({first_line(err)})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    return build_config(apply_overrides(tree, overrides or []), kind)
