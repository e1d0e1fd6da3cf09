"""Module docstrings: every module has one, and the callers they name really call them.

A docstring that says "Called by `plan`" (or used, imported, collected by) must name a module
that imports this one, refers to it by its dotted name (a lazy dispatch table), or a package
one of whose modules does. Names that are not our modules (`make crds`, a CLI command) are
left alone. Read with `ast`; nothing is imported.
"""

from __future__ import annotations

import ast
import re

import pytest

from unit.import_graph import GRAPH, MODULES, PACKAGES

CLAIM = re.compile(r"(?:[Cc]alled|[Uu]sed|[Ii]mported|[Cc]ollected) by ([^;]*?)(?:\.\s|\.$|;|$)")
TICKED = re.compile(r"`([a-z_][a-z_0-9.]*)`")
DOCS = {
    name: ast.get_docstring(ast.parse(path.read_text("utf-8"))) for name, path in MODULES.items()
}


def _resolve(token: str, here: str) -> str | None:
    """The module (or package) of ours a docstring's `token` names, seen from module `here`."""
    package = here if here in PACKAGES else here.rpartition(".")[0]
    top = here.split(".")[0]
    for candidate in (token, f"{package}.{token}", f"{top}.{token}"):
        if candidate in MODULES:
            return candidate
    ends = [m for m in MODULES if m.split(".")[0] == top and m.endswith(f".{token}")]
    return ends[0] if len(ends) == 1 else None


def _calls(caller: str, callee: str) -> bool:
    callers = [m for m in MODULES if m == caller or m.startswith(f"{caller}.")]
    return any(
        callee in GRAPH[m]
        or any(dep.startswith(f"{callee}.") for dep in GRAPH[m])
        or callee in MODULES[m].read_text("utf-8")
        for m in callers
    )


def _claims(name: str) -> list[str]:
    found = []
    for sentence in CLAIM.finditer(DOCS[name] or ""):
        # only the callers themselves: not asides in parentheses or after ", which"
        callers = re.sub(r"\([^)]*\)", "", sentence.group(1)).split(", which")[0]
        for token in TICKED.findall(callers):
            caller = _resolve(token, name)
            if caller and caller != name and not name.startswith(f"{caller}."):
                found.append(caller)
    return found


def test_the_check_reads_claims() -> None:
    assert "kubetune_operator.finetune.plan" in _claims("kubetune_operator.finetune.attempts")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_docstring_present_and_its_callers_call(name: str) -> None:
    assert DOCS[name] or name in PACKAGES, f"{name} has no module docstring"
    wrong = [caller for caller in _claims(name) if not _calls(caller, name)]
    assert not wrong, f"{name}'s docstring names callers that do not import it: {wrong}"
