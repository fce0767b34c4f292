"""The package layout holds: `runner` is the library and names a job kind only in its command
registry; no two modules of `runner/` or `jobs/` import each other in a circle; `--help` stays instant.

The import graph is read from the source (every `import`, also those inside functions: a lazy import
is still a dependency), so the test needs nothing installed and no module imported.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("runner", "jobs")
# Circles known and filed for removal (none today). The test fails once one is gone, so an entry is
# dropped with its fix and never hides a new circle.
KNOWN_CIRCLES: list[set[str]] = []


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages (a package is its __init__)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project's modules that `name` imports; `from pkg import sub` names the submodule."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in known:
                    out.add(sub)
                elif node.module in known:
                    out.add(node.module)
    out.discard(name)
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_circles_are_found():
    # The walk itself: a circle of three is one component; a chain and a self-import are none.
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(edges) == [{"a", "b", "c"}]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_in_runner_or_jobs():
    found = circles(graph())
    new = [sorted(c) for c in found if c not in KNOWN_CIRCLES]
    assert not new, f"import circles: {new}"
    gone = [sorted(c) for c in KNOWN_CIRCLES if c not in found]
    assert not gone, f"no longer circles, drop them from KNOWN_CIRCLES: {gone}"


def test_runner_imports_no_job_kind():
    edges = graph()
    offenders = {
        name: sorted(dep for dep in deps if dep.split(".")[0] == "jobs")
        for name, deps in edges.items()
        if name.split(".")[0] == "runner"
    }
    assert {name: deps for name, deps in offenders.items() if deps} == {}


def test_every_command_resolves():
    from runner.cli import COMMANDS, JOB_COMMANDS, command, job_config_class
    from runner.config import JobConfig

    for name in COMMANDS:
        module = command(name)
        assert callable(module.add_parser) and callable(module.execute), name
    for name in JOB_COMMANDS:
        assert issubclass(job_config_class(name), JobConfig), name


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["eval", "--help"], ["submit", "--help"]])
def test_help_imports_no_heavy_library(argv):
    # `--help` must stay instant: building the parser imports every command module, none of which
    # may pull torch, Ray, Arrow or pydantic in at import time.
    code = (
        "import sys\n"
        "from runner.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'ray', 'pyarrow', 'transformers', 'pydantic') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
