"""manifests/install/ is the chart rendered with its default values: regenerated, never drifted.

`make install-manifests` (hack/install-manifests.sh) writes it; this test runs the same script
into a temporary file and compares, then checks that the committed objects are exactly the
chart's (plus the Namespace helm users get from `--create-namespace`). Needs helm.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from chart_render import NAMESPACE, REPO, find_helm, render

pytestmark = pytest.mark.integration
INSTALL = REPO / "manifests" / "install" / "kubetune.yaml"


def test_install_manifest_is_regenerated(tmp_path: Path) -> None:
    find_helm()  # skip (or fail under CI) without helm, before the script says the same
    out = tmp_path / "kubetune.yaml"
    subprocess.run([str(REPO / "hack" / "install-manifests.sh"), str(out)], check=True)
    assert out.read_text() == INSTALL.read_text(), (
        "manifests/install/kubetune.yaml is stale: run `make install-manifests`"
    )


def test_install_manifest_has_the_chart_objects() -> None:
    installed = [d for d in yaml.safe_load_all(INSTALL.read_text()) if d]
    namespace, rest = installed[0], installed[1:]
    assert namespace["kind"] == "Namespace" and namespace["metadata"]["name"] == NAMESPACE
    assert rest == render(), "install manifest objects differ from `helm template` defaults"
    assert sorted(p.name for p in INSTALL.parent.iterdir()) == ["kubetune.yaml"]
