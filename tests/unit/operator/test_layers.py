"""The operator's import graph: no circles, at most 8 floors, kinds never import each other.

Floors count modules on the longest chain of `kubetune_operator` imports (function-level ones
included; package `__init__`s left out): a module that imports none of ours is floor 1. The
graph is `unit.import_graph`, read from the source with `ast`.
"""

from __future__ import annotations

import functools

import pytest

from unit.import_graph import subgraph

PACKAGE = "kubetune_operator"
MAX_FLOORS = 8
GRAPH = subgraph(PACKAGE)


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
