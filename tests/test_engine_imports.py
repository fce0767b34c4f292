"""The engine's shape: no import circle between its modules (imports inside functions count too: they
hide one), and one decode loop that is given a cache layout, not specialised by subclasses."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "runner" / "engine"


def engine_imports() -> dict[str, set[str]]:
    """Each engine module's imports of other engine modules, anywhere in its file."""
    graph = {}
    for path in ENGINE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            found |= {n.split(".")[2] for n in names if n.startswith("runner.engine.") and n.count(".") >= 2}
        graph[path.stem] = {m for m in found if (ENGINE / f"{m}.py").exists() and m != path.stem}
    return graph


def circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path of module names, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    return next((c for n in sorted(graph) if n not in state and (c := visit(n, [n]))), None)


def test_the_circle_finder_finds_one():
    assert circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert circle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_the_engine():
    graph = engine_imports()
    assert graph["padded"] >= {"decode", "layouts"} and graph["layouts"] >= {"forward", "prefix"}
    assert circle(graph) is None, f"import circle: {' -> '.join(circle(graph))}"


def test_nothing_subclasses_the_decode_loop():
    """Cache layouts are objects the loop is given (runner.engine.layouts), not overridden hooks."""
    root = ENGINE.parents[1]
    subclasses = [
        f"{path.relative_to(root)}:{node.name}"
        for folder in ("runner", "jobs")
        for path in (root / folder).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        and any(getattr(b, "id", getattr(b, "attr", None)) == "DecodeLoop" for b in node.bases)
    ]
    assert subclasses == []
