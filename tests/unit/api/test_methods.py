"""The torch-free method registry: one entry per `method.type`, and no branching on it elsewhere.

`METHODS` must cover every literal of the schema's `MethodSpec.type`; the source of the operator
and the trainer must not compare `method.type` (or a method literal) anywhere: what differs by
method is asked of the registry.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest

from kubetune_api.finetune import MethodSpec
from kubetune_api.methods import METHOD_FIELDS, METHODS, gpu_problems, method_notes

ROOT = Path(__file__).resolve().parents[3]
SOURCES = [ROOT / "operator", ROOT / "trainer_image"]
LITERALS = set(get_args(MethodSpec.model_fields["type"].annotation))

ALLOWED_TABLES = {
    # ms-swift's `peft_method` names mapped to ours: a translation table, not a branch
    "operator/kubetune_api/trainer_config.py",
}


def test_every_method_type_has_traits() -> None:
    assert set(METHODS) == LITERALS
    assert all(name == traits.name for name, traits in METHODS.items())


def test_method_fields_are_the_schema_fields_and_each_method_reads_some() -> None:
    assert tuple(f for f in MethodSpec.model_fields if f != "type") == METHOD_FIELDS
    for traits in METHODS.values():
        assert traits.fields and set(traits.fields) <= set(METHOD_FIELDS)
        assert traits.gradient_checkpointing or traits.checkpointing_off
        assert not traits.needs_gpu or traits.gpu_reason


def test_notes_name_fields_the_method_ignores() -> None:
    method = MethodSpec.model_validate({"type": "adapter", "rank": 4, "bottleneckSize": 8})
    assert method_notes(method) == ["method.rank is ignored by method.type 'adapter'"]
    assert method_notes(MethodSpec(type="adapter")) == []


def test_gpu_problems_is_the_operators_message() -> None:
    assert gpu_problems(MethodSpec(type="qlora"), 0) == [
        "spec.method.type: qlora needs a GPU (4-bit bitsandbytes), got gpusPerNode 0"
    ]
    assert gpu_problems(MethodSpec(type="qlora"), 1) == []
    assert gpu_problems(MethodSpec(type="lora"), 0) == []


def _is_method_type(node: ast.AST) -> bool:
    """`method.type`, `spec.method.type`, `cfg.method.type`, ..."""
    if not (isinstance(node, ast.Attribute) and node.attr == "type"):
        return False
    owner = node.value
    return (isinstance(owner, ast.Name) and owner.id == "method") or (
        isinstance(owner, ast.Attribute) and owner.attr == "method"
    )


def _is_literal(node: ast.AST) -> bool:
    """A method literal, or a tuple/list/set holding one."""
    if isinstance(node, ast.Constant):
        return node.value in LITERALS
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_is_literal(e) for e in node.elts)
    return False


def _is_branch(node: ast.AST) -> bool:
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        return any(_is_method_type(o) or _is_literal(o) for o in operands)
    if isinstance(node, ast.MatchValue):
        return _is_literal(node.value)
    if isinstance(node, ast.Dict):
        return any(k is not None and _is_literal(k) for k in node.keys)
    return False


def branches(tree: ast.AST) -> list[int]:
    """Lines that compare `method.type` or a method literal, match on one, or key a table by one."""
    return sorted({node.lineno for node in ast.walk(tree) if _is_branch(node)})  # type: ignore[attr-defined]


def offenders() -> dict[str, list[int]]:
    found = {}
    for source in SOURCES:
        for path in sorted(source.rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            lines = branches(ast.parse(path.read_text(encoding="utf-8")))
            if lines and name not in ALLOWED_TABLES:
                found[name] = lines
    return found


def test_no_method_type_branch_outside_the_registries() -> None:
    found = offenders()
    assert not found, (
        f"branch on method.type here: ask kubetune_api.methods.METHODS or "
        f"kubetune_trainer.methods.TRAINER_METHODS instead: {found}"
    )


@pytest.mark.parametrize(
    "code",
    [
        "if method.type == 'qlora': pass",
        "if spec.method.type in ('lora', 'qlora'): pass",
        "x = kind != 'prefix-tuning'",
        "ignored = {'lora': 1}[method.type]",
        "match kind:\n    case 'adapter': pass",
    ],
)
def test_the_scan_sees_each_kind_of_branch(code: str) -> None:
    assert branches(ast.parse(code))


def test_the_scan_ignores_other_types_and_words() -> None:
    code = "if device.type == 'cuda': pass\nout = root / 'adapter'\nx = c.type == 'Ready'"
    assert branches(ast.parse(code)) == []
