"""Write docs/configuration.md, the configuration reference, from the pydantic models' field descriptions.

    python scripts/config_reference.py            # rewrite docs/configuration.md
    python scripts/config_reference.py --check    # exit 1 when the file is stale

The page is generated so that it cannot drift from the code: tests/test_docs.py regenerates it and
fails when the committed file differs or when a field has no description. A job kind with a config of
its own adds a (title, model, intro) entry to ROOTS.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "docs" / "configuration.md"
COMMAND = "python scripts/config_reference.py"


def roots() -> list[tuple[str, type[BaseModel], str, str]]:
    """(title, model, key prefix, intro) of each config the reference documents, in page order."""
    from jobs.eval.config import EvalConfig
    from jobs.openai_batch.config import BatchConfig
    from runner.config import JobConfig

    return [
        (
            "Generation jobs (`runner run`)",
            JobConfig,
            "",
            "A job config is YAML with these sections; `model` and `data` are required, every other "
            "section has defaults. `--set section.key=value` overrides any value (parsed as YAML).",
        ),
        (
            "Evaluation jobs (`runner eval`)",
            EvalConfig,
            "",
            "An eval config is a generation config plus how rows are scored: one task (`data` + "
            "`scoring`, named by `name`) or several (`tasks`). Only the keys an eval config adds or "
            "changes are listed here; see [evaluation.md](evaluation.md) for scorers and gates.",
        ),
        (
            "OpenAI batch jobs (`runner batch`)",
            BatchConfig,
            "",
            "A batch job is a generation job whose rows are the requests of an OpenAI batch file: the "
            "`batch` section replaces `data`; `sampling` holds the values of the fields a request leaves "
            "out. Only the keys a batch config adds or changes are listed here.",
        ),
    ]


def type_name(annotation: object) -> str:
    """A field's type as a reader of YAML sees it: `a` | `b` for choices, `null` for None."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping {type_name(args[0])} → {type_name(args[1])}" if args else "mapping"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default is PydanticUndefined else field.default
    if isinstance(value, BaseModel):
        return "see below"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == [] or value == {}:
        return "empty"
    return f"`{value}`"


def nested_model(annotation: object) -> type[BaseModel] | None:
    """The config model a field holds (directly, optionally, or as a list's items), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = nested_model(arg)
        if found is not None:
            return found
    return None


def sections(model: type[BaseModel], prefix: str, only: set[str] | None = None, seen: set | None = None):
    """(dotted name, model, keys shown) of `model` and every model under it, depth first; a model
    already in `seen` (documented earlier on the page) is not repeated."""
    seen = set() if seen is None else seen
    seen.add(model)
    yield prefix, model, only
    for name, field in model.model_fields.items():
        if only is not None and name not in only:
            continue
        child = nested_model(field.annotation)
        if child is not None and child not in seen:
            is_list = typing.get_origin(field.annotation) is list or any(
                typing.get_origin(a) is list for a in typing.get_args(field.annotation)
            )
            yield from sections(child, f"{prefix}{name}{'[]' if is_list else ''}.", None, seen)


def missing_descriptions(model: type[BaseModel]) -> list[str]:
    """Dotted names of the fields under `model` that have no description (the reference needs one each)."""
    missing = []
    for prefix, section, _ in sections(model, ""):
        for name, field in section.model_fields.items():
            if not (field.description or "").strip():
                missing.append(f"{prefix}{name}")
    return sorted(set(missing))


def eval_only_fields(eval_model: type[BaseModel], base: type[BaseModel]) -> set[str]:
    """The top-level keys an eval config adds to, or redefines from, a generation config."""
    base_fields = base.model_fields
    return {
        name
        for name, field in eval_model.model_fields.items()
        if name not in base_fields or field.annotation != base_fields[name].annotation
    }


def table(section: type[BaseModel], prefix: str, only: set[str] | None) -> list[str]:
    doc = (section.__doc__ or "").strip().splitlines()[0] if section.__doc__ else ""
    title = prefix.rstrip(".") or "top level"
    lines = [f"### `{title}`" if prefix else "### Top level", ""]
    if doc and prefix:
        lines += [doc, ""]
    lines += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in section.model_fields.items():
        if only is not None and name not in only:
            continue
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        lines.append(
            f"| `{prefix}{name}` | {type_name(field.annotation)} | {default_text(field)} | {description} |"
        )
    return [*lines, ""]


def render() -> str:
    """The whole page."""
    from runner.config import JobConfig

    out = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{COMMAND}` from the pydantic models' field descriptions; do not edit. -->",
        "",
        "Every section forbids unknown keys: a typo fails before anything starts, with the dotted key "
        "and exit code 2. Examples: "
        "[`configs/demo.yaml`](../configs/demo.yaml), "
        "[`configs/example-multi-gpu.yaml`](../configs/example-multi-gpu.yaml), "
        "[`configs/example-structured.yaml`](../configs/example-structured.yaml), "
        "[`configs/eval-demo.yaml`](../configs/eval-demo.yaml).",
        "",
    ]
    seen: set = set()
    for title, model, prefix, intro in roots():
        out += [f"## {title}", "", intro, ""]
        only = eval_only_fields(model, JobConfig) if model is not JobConfig else None
        for dotted, section, keys in sections(model, prefix, only, seen):
            out += table(section, dotted, keys)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(REPO)} is stale: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    TARGET.parent.mkdir(exist_ok=True)
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
