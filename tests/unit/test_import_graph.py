"""The import graph of our packages: which way imports point, and no circles.

Every import counts, at module level or inside a function (a lazy import that breaks a circle
at run time still ties the two modules together), and so do imports under TYPE_CHECKING. The
rules (docs/architecture.md): `kubetune_api` is the shared leaf and imports none of ours; the
operator never imports the trainer or the server; the trainer and the server never import
the operator. Read with `ast`, so nothing is imported (and torch is never loaded) to check.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = (REPO / "operator", REPO / "trainer_image")
OURS = ("kubetune_api", "kubetune_operator", "kubetune_cli", "kubetune_trainer", "kubetune_server")
# package -> packages of ours it must never import (kubetune_cli dispatches to all, lazily).
FORBIDDEN = {
    "kubetune_api": {"kubetune_operator", "kubetune_cli", "kubetune_trainer", "kubetune_server"},
    "kubetune_operator": {"kubetune_cli", "kubetune_trainer", "kubetune_server"},
    "kubetune_trainer": {"kubetune_operator", "kubetune_cli", "kubetune_server"},
    "kubetune_server": {"kubetune_operator", "kubetune_cli"},
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in ROOTS:
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[0] not in OURS:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Our modules that `name` imports (`from pkg import mod` resolves to pkg.mod)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in out if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


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
        "print(sorted(m for m in ('torch', 'optuna', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO / "operator")},
    ).stdout
    assert out.strip() == "[]"
