"""The import graph of our packages: which way imports point, and no circles.

The rules (docs/architecture.md): `kubetune_api` is the shared leaf and imports none of ours;
the operator never imports the trainer or the server; the trainer and the server never import
the operator; no module imports itself back through others. The graph is `unit.import_graph`
(every import counts, lazy and TYPE_CHECKING ones included).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from unit.import_graph import GRAPH, MODULES, REPO

# package -> packages of ours it must never import (kubetune_cli dispatches to all, lazily).
FORBIDDEN = {
    "kubetune_api": {"kubetune_operator", "kubetune_cli", "kubetune_trainer", "kubetune_server"},
    "kubetune_operator": {"kubetune_cli", "kubetune_trainer", "kubetune_server"},
    "kubetune_trainer": {"kubetune_operator", "kubetune_cli", "kubetune_server"},
    "kubetune_server": {"kubetune_operator", "kubetune_cli"},
}


def _cycle() -> list[str] | None:
    """One import circle, as the list of modules along it, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(GRAPH):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_sees_our_packages() -> None:
    assert {"kubetune_api.termination", "kubetune_operator.kube", "kubetune_trainer.train"} <= set(
        MODULES
    )
    assert "kubetune_api.termination" in GRAPH["kubetune_trainer.failures"]


def test_no_import_circles() -> None:
    assert _cycle() is None, " -> ".join(_cycle() or [])


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_the_right_way(package: str) -> None:
    wrong = sorted(
        f"{src} imports {dst}"
        for src, dsts in GRAPH.items()
        if src.split(".")[0] == package
        for dst in dsts
        if dst.split(".")[0] in FORBIDDEN[package]
    )
    assert not wrong, "\n".join(wrong)


def test_the_shared_layer_loads_without_torch_or_optuna() -> None:
    code = (
        "import sys, kubetune_api, kubetune_api.crd, kubetune_api.memory, "
        "kubetune_api.termination, kubetune_api.names; "
        "print(sorted(m for m in ('torch', 'optuna', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO / "operator")},
    ).stdout
    assert out.strip() == "[]"
