"""`kubectl apply -f manifests/install/` and every shipped example against a real API server.

- The install manifest is first applied as a server-side dry run (what a cautious admin runs),
  then for real; every object the API server stored contains what the file (and so
  `helm template` with default values: tests/integration/test_chart_install_manifests.py)
  asked for. The operator's Namespace, ServiceAccount, Deployment, Service and cluster RBAC are
  removed afterwards; the CRDs stay (other e2e modules use them).
- Every manifests/examples/*.yaml (FineTuneJobs, ModelDeployments) passes a server-side dry-run
  apply against the installed CRDs: schema, enums, bounds and CEL rules all accept it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "manifests" / "install"
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
MANAGER = "kubetune-e2e-install"


def install_objects() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(INSTALL.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def contained(want: Any, have: Any, path: str = "") -> list[str]:
    """Where `have` (the live object) lacks or differs from `want` (what was applied)."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return [f"{path}: not an object"]
        return [p for k, v in want.items() for p in contained(v, have.get(k), f"{path}.{k}")]
    if isinstance(want, list):
        if not isinstance(have, list) or len(want) != len(have):
            return [f"{path}: list differs"]
        return [
            p
            for i, (w, h) in enumerate(zip(want, have, strict=True))
            for p in contained(w, h, f"{path}[{i}]")
        ]
    return [] if want == have else [f"{path}: {want!r} != {have!r}"]


@pytest.fixture(scope="module")
def installed(
    kubectl: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[dict[str, Any]]]:
    objects = install_objects()
    namespace = next(o for o in objects if o["kind"] == "Namespace")["metadata"]["name"]
    dry_run = tmp_path_factory.mktemp("install") / "dry-run.yaml"
    dry_run.write_text(dry_run_objects(objects, namespace))
    kubectl(
        "apply", "--server-side", "--force-conflicts", f"--field-manager={MANAGER}",
        "--dry-run=server", "-f", str(dry_run),
    )  # fmt: skip
    kubectl(
        "apply", "--server-side", "--force-conflicts", f"--field-manager={MANAGER}",
        "-f", str(INSTALL),
    )  # fmt: skip
    for obj in objects:
        if obj["kind"] == "CustomResourceDefinition":
            name = obj["metadata"]["name"]
            kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    yield objects
    for obj in objects:
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found")
    kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found")


def dry_run_objects(objects: list[dict[str, Any]], namespace: str) -> str:
    """A dry run persists nothing, so the install's own Namespace never exists for the objects
    after it: dry-run those in `default` instead (same objects, an existing namespace)."""
    out = []
    for obj in objects:
        if obj["kind"] == "Namespace":
            continue
        copy = yaml.safe_load(yaml.safe_dump(obj))
        if copy["metadata"].get("namespace") == namespace:
            copy["metadata"]["namespace"] = "default"
        out.append(copy)
    return yaml.safe_dump_all(out)


def test_every_installed_object_is_stored_as_written(
    kubectl: Any, installed: list[dict[str, Any]]
) -> None:
    kinds = sorted(o["kind"] for o in installed)
    assert kinds == sorted(
        ["Namespace", "ServiceAccount", "CustomResourceDefinition", "CustomResourceDefinition",
         "ClusterRole", "ClusterRoleBinding", "Service", "Deployment",
         "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    )  # fmt: skip
    for obj in installed:
        args = ["get", obj["kind"].lower(), obj["metadata"]["name"]]
        if obj["metadata"].get("namespace"):
            args += ["-n", obj["metadata"]["namespace"]]
        live = kubectl.json(*args)
        wanted = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
        problems = contained(wanted, live)
        assert not problems, f"{obj['kind']} {obj['metadata']['name']}: {problems[:5]}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_passes_server_side_dry_run(
    kubectl: Any, installed: list[dict[str, Any]], namespace: str, example: Path
) -> None:
    result = kubectl(
        "apply", "--server-side", "--dry-run=server", "-n", namespace, "-f", str(example),
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{example.name} rejected: {result.stderr}"
    kinds = {d["kind"] for d in yaml.safe_load_all(example.read_text()) if d}
    assert kinds <= {"FineTuneJob", "ModelDeployment"}, f"{example.name}: unexpected kinds {kinds}"
