"""Relative paths in a config file are relative to the file's directory, as in compose files and
kustomize: `runner run job/x.yaml` finds `job/chat.jsonl` when the config says `chat.jsonl`, from any
working directory. `--set` values are typed on the command line, so they stay relative to it.

A value that could also be a hub id (`model.path`, `data.source`) is taken as a path only when it
names something next to the config (or looks like a file: `./x`, `*.jsonl`). A config written when
paths were relative to the working directory still runs: a value found only there is used as it is,
with a warning. Resolved paths are written relative to the working directory when they are under
it, so the settings hash, and resuming, do not depend on where the checkout lives.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# (dotted key, kind): "input" must exist or look like a file to be a path, "output" is always one.
# `*` is every key of a mapping; `[]` every item of a list.
PATH_KEYS = (
    ("model.path", "input"),
    ("model.tokenizer", "input"),
    ("model.adapter", "input"),
    ("model.adapters.*", "input"),
    ("data.source", "input"),
    ("tasks.[].data.source", "input"),
    ("sampling.json_schema", "input"),
    ("output.path", "output"),
    ("batch.input", "input"),
    ("batch.output_file", "output"),
    ("batch.error_file", "output"),
)
_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".pq")


def resolve_paths(tree: dict, config_dir: Path) -> dict:
    """`tree` (a config file's contents) with its relative paths resolved against `config_dir`."""
    for dotted, kind in PATH_KEYS:
        _visit(tree, dotted.split("."), dotted, kind, config_dir)
    return tree


def _visit(node, keys: list[str], dotted: str, kind: str, config_dir: Path) -> None:
    key, rest = keys[0], keys[1:]
    if key == "[]":
        children = list(enumerate(node)) if isinstance(node, list) else []
    elif key == "*":
        children = list(node.items()) if isinstance(node, dict) else []
    else:
        children = [(key, node[key])] if isinstance(node, dict) and key in node else []
    for name, child in children:
        if rest:
            _visit(child, rest, dotted, kind, config_dir)
        elif isinstance(child, str):
            node[name] = _resolved(child, kind, config_dir, dotted)


def _resolved(value: str, kind: str, config_dir: Path, dotted: str) -> str:
    if not value or "://" in value or value.startswith(("/", "~", "demo:")) or os.path.isabs(value):
        return value
    if "\n" in value or value.lstrip().startswith(("{", "[")):
        return value  # inline text (a JSON schema), not a path
    beside = config_dir / value
    if _exists(beside):
        return _shown(beside)
    if _exists(Path(value)) and config_dir.resolve() != Path.cwd().resolve():
        log.warning(
            "%s: %s is not next to the config (%s) but is in the working directory; paths in a config "
            "are relative to its directory, so write it as %s",
            dotted,
            value,
            config_dir,
            os.path.relpath(Path(value).resolve(), config_dir.resolve()),
        )
        return value
    if (
        kind == "output"
        or value.startswith(".")
        or value.lower().endswith(_DATA_SUFFIXES)
        or glob.has_magic(value)
    ):
        return _shown(beside)
    return value  # a hub id (org/name), kept as written


def _exists(path: Path) -> bool:
    try:
        return path.exists() or (glob.has_magic(str(path)) and bool(glob.glob(str(path))))
    except OSError:  # a name too long to be a path: it is none
        return False


def _shown(path: Path) -> str:
    absolute = Path(os.path.normpath(path.absolute()))
    try:
        return absolute.relative_to(Path.cwd().absolute()).as_posix() or "."
    except ValueError:
        return str(absolute)
