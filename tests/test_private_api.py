"""No private or internal-module use of another library outside the compat package (runner/compat/).

A private name changes in any release without notice; runner.compat keeps each use in one place,
with why and the versions checked, and tests/test_compat.py exercises each. This test reads the code
(its syntax tree: comments and docstrings may name anything) and fails on a use that slipped out:

- an import of a transformers submodule (its public API is what `transformers` itself exports);
- an import path with a private part (`ray._private`, `ray.data._internal`, `torch._dynamo`), or a
  private name imported from a library (`from x import _y`), or a private attribute of an imported
  library module (`torch._C`);
- `getattr` / `hasattr` / `setattr` of a private attribute name (how undocumented fields of a
  library's objects are read: `model._supports_sdpa`);
- a name of an undocumented contract compat wraps (`BlockMetadata`, the packed-attention kwargs, ...).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPAT = ROOT / "runner" / "compat"
OURS = {"runner", "jobs", "tests", "scripts"}
# Names of undocumented contracts that runner.compat wraps: they appear nowhere else.
CONTRACTS = {
    "BlockMetadata",
    "DynamicLayer",
    "get_layer_types_and_kwargs",
    "get_class_from_dynamic_module",
    "cu_seq_lens_q",
    "cu_seq_lens_k",
    "max_length_q",
    "max_length_k",
    "s_aux",
    "layer_idx",
    "supported_keys",
    "logit_processor",
    "background_thread_status",
    "position_offset",
    "tensors_required",
}


def library(module: str) -> bool:
    top = module.split(".")[0]
    return bool(top) and top not in OURS and top not in sys.stdlib_module_names


def private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are statements (docstrings), which may name anything."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }


def findings(source: str) -> list[str]:
    """Each private or internal use in `source` as 'line: what'."""
    tree = ast.parse(source)
    found, modules, skip = [], set(), docstrings(tree)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if library(alias.name):
                    modules.add((alias.asname or alias.name).split(".")[0])
                    found += _module_path(alias.name, line)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and library(node.module):
            found += _module_path(node.module, line)
            found += [f"{line}: from {node.module} import {a.name}" for a in node.names if private(a.name)]
            modules |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
            "getattr",
            "hasattr",
            "setattr",
        ):
            name = node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and private(name.value):
                found.append(f"{line}: {node.func.id}(..., {name.value!r})")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            found += [f"{line}: {name!r}" for name in CONTRACTS if name in node.value]
        elif isinstance(node, ast.Attribute | ast.Name | ast.alias | ast.keyword):
            name = getattr(node, "attr", None) or getattr(node, "id", None) or getattr(node, "name", None)
            name = name if name is not None else getattr(node, "arg", None)
            if name in CONTRACTS:
                found.append(f"{line}: {name}")
    for node in ast.walk(tree):  # a private attribute of an imported library module: torch._C
        if (
            isinstance(node, ast.Attribute)
            and private(node.attr)
            and getattr(node.value, "id", None) in modules
        ):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return found


def _module_path(module: str, line: int) -> list[str]:
    parts = module.split(".")
    if any(private(p) for p in parts):
        return [f"{line}: {module} (private module)"]
    if parts[0] == "transformers" and len(parts) > 1:
        return [f"{line}: {module} (a transformers submodule; import from `transformers`)"]
    return []


def test_the_check_finds_each_kind_of_private_use():
    source = '''
"""A docstring may name BlockMetadata and s_aux."""
import torch
import ray._private.state
from ray.data._internal import plan
from transformers.cache_utils import DynamicCache
from xgrammar import _core
from ray.data.block import BlockMetadata

x = torch._C
y = getattr(model, "_supports_sdpa", False)
z = kwargs["cu_seq_lens_q"]
w = module.layer_idx
'''
    lines = sorted({int(f.split(":")[0]) for f in findings(source)})
    assert lines == [4, 5, 6, 7, 8, 10, 11, 12, 13]
    public = (
        "import torch\nfrom transformers import DynamicCache\nfrom ray.data import ReadTask\nself._x = 1\n"
    )
    assert findings(public) == []


def test_no_private_library_use_outside_compat():
    files = [
        p for folder in ("runner", "jobs") for p in (ROOT / folder).rglob("*.py") if COMPAT not in p.parents
    ]
    assert len(files) > 50
    found = [f"{p.relative_to(ROOT)}:{f}" for p in files for f in findings(p.read_text())]
    assert found == [], "private library use outside runner/compat/ (move it there):\n" + "\n".join(found)
