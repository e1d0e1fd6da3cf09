"""docs/configuration.md is generated from the CRD schemas (`make docs`) and must not drift."""

from __future__ import annotations

from pathlib import Path

from kubetune_api.crd import all_crds
from kubetune_api.docs import render, walk

ROOT = Path(__file__).resolve().parents[3]


def test_committed_reference_matches_generated() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == render(), "docs/configuration.md is stale: run `make docs`"


def test_every_spec_field_has_a_row() -> None:
    text = render()
    for crd in all_crds().values():
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, _ in walk(root["properties"]["spec"], "spec"):
            assert f"| `{path.split(' ')[0]}`" in text, path
    assert '`"lora"` \\| `"qlora"`' in text  # enums reach the reference
