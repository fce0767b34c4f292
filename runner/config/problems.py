"""Validation errors as the user fixes them: every one at once, each a line naming its dotted key, an
unknown key with the nearest valid one (difflib, as git and argparse suggest a command)."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


def problems(err: ValidationError, tree: dict, kind: type[BaseModel]) -> list[str]:
    """One line per distinct key at fault, in the order pydantic found them."""
    lines: dict[str, str] = {}
    for error in err.errors():
        path = _input_path(error, tree)
        where = ".".join(str(p) for p in path) or "config"
        lines.setdefault(where, f"{where}: {_explain(error, path, kind)}")
    return list(lines.values())


def _input_path(error: dict, tree: Any) -> list:
    """The error's location in the user's tree: pydantic adds union members and validator names to
    `loc` (`template.str`, `function-after[...]`), which are no keys of the config."""
    loc, path, node = list(error["loc"]), [], tree
    for item in loc:
        if isinstance(node, dict) and item in node:
            node = node[item]
        elif isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
            node = node[item]
        elif error["type"] == "missing" and item == loc[-1]:
            pass  # the missing key itself: not in the tree, but it is what the user must add
        else:
            break
        path.append(item)
    return path


def _explain(error: dict, path: list, kind: type[BaseModel]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key" + _suggestion(str(path[-1]), _model_at(kind, path[:-1]))
    if error["type"] == "missing":
        return "required field is missing"
    msg = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    return f"{msg}{shown}"


def _suggestion(key: str, model: type[BaseModel] | None) -> str:
    if model is None:
        return ""
    names = list(model.model_fields)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]}?"
    return f" (valid: {', '.join(names)})"


def _model_at(kind: type[BaseModel], path: list) -> type[BaseModel] | None:
    """The config model whose keys live at `path` (list indices step into the list's item model)."""
    model: type[BaseModel] | None = kind
    for item in path:
        if isinstance(item, int):
            continue
        field = model.model_fields.get(item) if model is not None else None
        model = _model_in(field.annotation) if field is not None else None
        if model is None:
            return None
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds: `X`, `X | None`, `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
