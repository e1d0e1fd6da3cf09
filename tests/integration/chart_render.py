"""Render charts/kubetune with `helm template` and look objects up: shared by the chart tests.

helm is the pinned one `hack/cluster.sh env` puts on PATH (built by `make cluster-up`, which
`.ci/run` runs before the tests), else the first on PATH. Without one the chart tests skip,
except under CI (`CI` set), where a missing helm is a failure. Imported by
tests/integration/test_chart*.py; standard library, pytest and PyYAML only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubetune"
RELEASE = "kubetune"
NAMESPACE = "kubetune-system"
Obj = dict[str, Any]


def find_helm() -> str:
    """Path of helm; skips (fails under CI) when there is none."""
    env = subprocess.run(
        [str(REPO / "hack" / "cluster.sh"), "env"], capture_output=True, text=True, check=False
    )
    found = re.search(r'^export PATH="(.*):\$PATH"$', env.stdout, re.MULTILINE)
    if found and (Path(found.group(1)) / "helm").exists():
        return str(Path(found.group(1)) / "helm")
    on_path = shutil.which("helm")
    if on_path:
        return on_path
    message = "no helm: run `make cluster-up` once (it builds the pinned helm)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([find_helm(), *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def set_args(values: dict[str, Any] | None) -> list[str]:
    """`--set-json key=<json>` per top-level value (exact types, no --set string parsing)."""
    import json

    out: list[str] = []
    for key, value in (values or {}).items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def render(values: dict[str, Any] | None = None, *, release: str = RELEASE) -> list[Obj]:
    """The chart's objects for these values (dotted keys allowed: {"crds.keep": False})."""
    text = helm("template", release, str(CHART), "--namespace", NAMESPACE, *set_args(values)).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(
    objects: list[Obj], kind: str, name: str | None = None, namespace: str | None = None
) -> Obj:
    """The one object of this kind (and name/namespace); fails when there is not exactly one."""
    hits = [
        o
        for o in objects
        if o["kind"] == kind
        and (name is None or o["metadata"]["name"] == name)
        and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def kinds(objects: list[Obj]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def operator_container(objects: list[Obj]) -> Obj:
    deployment = find(objects, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return dict(next(c for c in containers if c["name"] == "operator"))


def env_of(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
