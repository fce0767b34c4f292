"""Loading a config: YAML plus ``--set a.b=c`` overrides, validated into one job kind's model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from runner.config.job import JobConfig
from runner.config.paths import resolve_paths
from runner.config.problems import problems
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
    """Apply ``a.b=c`` overrides; values are parsed as YAML scalars (``3``, ``true``, ``[a, b]``). A
    value that is not YAML (``[a``, ``{{ x }}``) is the text as typed, as a shell user means it."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        _set_dotted(tree, key.strip(), _parse_value(raw))
    return tree


def _parse_value(raw: str) -> Any:
    if not raw.strip():
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _texts_where_text_is_wanted(tree: dict, overrides: list[str], err: ValidationError) -> bool:
    """Put back as typed the --set values YAML read as a mapping or list where the field wants text
    (`data.prompt.template=Q: {q}`); True when one was put back."""
    wanted = {tuple(str(p) for p in e["loc"][:-1]) for e in err.errors() if e["type"] == "string_type"}
    wanted |= {tuple(str(p) for p in e["loc"]) for e in err.errors() if e["type"] == "string_type"}
    changed = False
    for item in overrides:
        key, _, raw = item.partition("=")
        key = key.strip()
        if tuple(key.split(".")) in wanted and not isinstance(_parse_value(raw), str):
            _set_dotted(tree, key, raw)
            changed = True
    return changed


def build_config(tree: dict, kind: type[JobConfig] = JobConfig) -> JobConfig:
    """Validate a plain dict into a JobConfig (or a job kind's subclass). A ConfigError holds one line
    per problem, each naming its key, so a config with three mistakes needs one run, not three."""
    try:
        return kind.model_validate(tree)
    except ValidationError as err:
        raise ConfigError("\n".join(problems(err, tree, kind))) from None


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, kind: type[JobConfig] = JobConfig
) -> JobConfig:
    """Read a YAML config (or none) and apply overrides; `kind` is the job kind's config class.
    Relative paths in the file are relative to its directory (`runner.config.paths`); in `--set`
    values, to the working directory."""
    tree: dict = {}
    overrides = overrides or []
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
        tree = resolve_paths(tree, path.parent)
    tree = apply_overrides(tree, overrides)
    try:
        return kind.model_validate(tree)
    except ValidationError as err:
        if not _texts_where_text_is_wanted(tree, overrides, err):
            raise ConfigError("\n".join(problems(err, tree, kind))) from None
    return build_config(tree, kind)
