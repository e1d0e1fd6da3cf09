"""The operator's import graph: no circles, at most 8 floors, kinds never import each other.

Floors count modules on the longest chain of `kubetune_operator` imports (function-level ones
included): a module that imports none of ours is floor 1. Read from the source with `ast`, so
nothing is imported.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

import kubetune_operator

ROOT = Path(kubetune_operator.__file__).parent
PACKAGE = "kubetune_operator"
MAX_FLOORS = 8


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """The modules of ours `name` imports (`from pkg import mod` counts as `pkg.mod`)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    return {m for m in out if m in MODULES and m != name and m not in packages}


GRAPH = {name: _imports(name) for name in MODULES}


@functools.cache
def floor(name: str, chain: tuple[str, ...] = ()) -> int:
    if name in chain:
        raise AssertionError(f"import circle: {' -> '.join((*chain, name))}")
    return 1 + max((floor(dep, (*chain, name)) for dep in GRAPH[name]), default=0)


def test_the_graph_is_read() -> None:
    assert "kubetune_operator.finetune.plan" in GRAPH["kubetune_operator.finetune.reconcile"]
    assert floor("kubetune_operator.names") == 1


def test_no_circles_and_at_most_eight_floors() -> None:
    floors = {name: floor(name) for name in GRAPH}
    tallest = max(floors, key=floors.__getitem__)
    assert floors[tallest] <= MAX_FLOORS, f"{tallest} is on floor {floors[tallest]}"


@pytest.mark.parametrize(("kind", "other"), [("finetune", "serving"), ("serving", "finetune")])
def test_the_kinds_do_not_import_each_other(kind: str, other: str) -> None:
    prefix, forbidden = f"{PACKAGE}.{kind}", f"{PACKAGE}.{other}"
    bad = {m: d for m in GRAPH if m.startswith(prefix) for d in GRAPH[m] if d.startswith(forbidden)}
    assert bad == {}


def test_the_core_imports_neither_kind() -> None:
    core = [m for m in GRAPH if m.count(".") == 1 and not m.endswith(".cli")]
    bad = {m: d for m in core for d in GRAPH[m] if d.split(".")[1] in ("finetune", "serving")}
    assert bad == {}
