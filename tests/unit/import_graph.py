"""Our modules and the imports between them, read from the source with `ast` (nothing imported).

Every import counts, at module level or inside a function (a lazy import that breaks a circle
at run time still ties the two modules together), and so do imports under TYPE_CHECKING;
`from pkg import mod` counts as an import of `pkg.mod`. Used by `test_import_graph`
(direction between packages, no circles) and `operator/test_layers` (the operator's floors).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = (REPO / "operator", REPO / "trainer_image")
OURS = ("kubetune_api", "kubetune_operator", "kubetune_cli", "kubetune_trainer", "kubetune_server")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in ROOTS:
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[0] in OURS:
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()
PACKAGES = frozenset(name for name, path in MODULES.items() if path.name == "__init__.py")


def _imports(name: str, path: Path) -> set[str]:
    package = name if name in PACKAGES else name.rpartition(".")[0]
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


def subgraph(package: str, *, packages: bool = False) -> dict[str, set[str]]:
    """The imports among the modules of `package` (package `__init__`s left out unless asked)."""

    def inside(m: str) -> bool:
        return m.split(".")[0] == package and (packages or m not in PACKAGES)

    return {m: {d for d in deps if inside(d)} for m, deps in GRAPH.items() if inside(m)}
