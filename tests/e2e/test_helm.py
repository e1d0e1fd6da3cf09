"""The Helm chart against a real API server: install, RBAC in use, upgrade of a CRD, uninstall.

- `helm install` of charts/kubetune (NOTES name the next command); the operator runs as a local
  process (kwok pods run no containers) with the flags and environment of the chart's own
  Deployment, authenticated only by a token of the chart's ServiceAccount
  (`kubectl create token`): it reconciles a FineTuneJob end to end (trainer pod on a kwok GPU
  node, finished as a kubelet would, phase Succeeded) and logs no permission problem. The
  ServiceAccount cannot read Secrets or delete pods.
- `helm upgrade` with a chart whose FineTuneJob CRD has a new field (a copy of the chart with
  one more property, exactly what a schema change plus `make crds` produces) updates the
  CRD in place; FineTuneJobs survive; `crds.keep` toggles the keep annotation.
- `helm uninstall` removes the operator's objects and, with `crds.keep=false`, the CRDs; with
  the default `crds.keep=true` the CRDs stay.
Tests run in file order and share one release (module scope). Helm takes ownership of CRDs
that other e2e modules applied with kubectl (`--take-ownership`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_helpers import (
    REPO,
    TRAINER_IMAGE,
    OperatorProcess,
    create_pvcs,
    delete_pvs,
    event_reasons,
    finish_pod,
    wait_phase,
    wait_pod_running,
)

pytestmark = pytest.mark.e2e
CHART = REPO / "charts" / "kubetune"
RELEASE = "kubetune"
CRDS = ("finetunejobs.kubetune.io", "modeldeployments.kubetune.io")
Wait = Callable[..., Any]


@dataclass
class Release:
    namespace: str
    install_output: str
    helm: Callable[..., subprocess.CompletedProcess[str]]


def _helm_runner(cluster: Any) -> Callable[..., subprocess.CompletedProcess[str]]:
    env = cluster.env()
    helm_path = shutil.which("helm", path=env["PATH"])
    assert helm_path, "no helm on the cluster's PATH (hack/cluster.sh builds it)"

    def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [helm_path, *args], env=env, capture_output=True, text=True, timeout=180
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    return helm


def values_args(namespace: str, keep: bool) -> list[str]:
    return [
        "--namespace", namespace,
        "--set", f"crds.keep={str(keep).lower()}",
        "--set", f"defaults.trainerImage={TRAINER_IMAGE}",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def release(cluster: Any, kubectl: Any) -> Iterator[Release]:
    """One release of the chart in a fresh namespace; uninstalled at the end if still there."""
    helm = _helm_runner(cluster)
    namespace = f"kubetune-e2e-{uuid.uuid4().hex[:6]}"
    # CRDs left by an earlier crds.keep=true release still carry the keep annotation, and helm
    # adopting an object (--take-ownership) does not remove annotations it never set: start clean.
    for crd in CRDS:
        kubectl("annotate", "crd", crd, "helm.sh/resource-policy-", check=False)
    out = helm(
        "install", RELEASE, str(CHART), "--create-namespace", "--take-ownership",
        *values_args(namespace, keep=False),
    )  # fmt: skip
    yield Release(namespace, out.stdout, helm)
    helm("uninstall", RELEASE, "--namespace", namespace, check=False)
    kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found")


def chart_deployment(release: Release) -> dict[str, Any]:
    """The operator Deployment as the release rendered it (`helm get manifest`)."""
    manifest = release.helm("get", "manifest", RELEASE, "--namespace", release.namespace).stdout
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    return next(d for d in docs if d["kind"] == "Deployment")


def service_account_kubeconfig(kubectl: Any, release: Release, path: Path) -> Path:
    """A kubeconfig holding only a token of the chart's ServiceAccount."""
    token = kubectl(
        "create", "token", RELEASE, "-n", release.namespace, "--duration=1h"
    ).stdout.strip()
    admin = kubectl.json("config", "view", "--raw", "--minify")
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": "kubetune-operator", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "e2e", "user": "kubetune-operator"}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def operator_from_chart(
    cluster: Any, release: Release, kubeconfig: Path, log: Path
) -> OperatorProcess:
    """`kubetune operator` with the chart Deployment's args and env (ports are the test's)."""
    container = chart_deployment(release)["spec"]["template"]["spec"]["containers"][0]
    args = [
        a for a in container["args"][1:] if not a.startswith(("--metrics-port", "--health-port"))
    ]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    process_env = {**cluster.env(), **env, "KUBECONFIG": str(kubeconfig), "POD_ID": "e2e-operator"}
    return OperatorProcess(process_env, log, extra_args=args)


@pytest.fixture(scope="module")
def chart_operator(
    cluster: Any, kubectl: Any, release: Release, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    folder = tmp_path_factory.mktemp("helm-operator")
    kubeconfig = service_account_kubeconfig(kubectl, release, folder / "kubeconfig")
    proc = operator_from_chart(cluster, release, kubeconfig, folder / "operator.log")
    proc.start()
    yield proc
    proc.stop()
    print(f"--- operator log ({proc.log_path}) ---\n{proc.log_tail()}")


def ftj_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "name": "Qwen/Qwen3-8B",
                "source": {"pvc": {"claimName": "models", "path": "q"}},
            },
            "dataset": {"train": {"pvc": {"claimName": "data", "path": "faq/train.jsonl"}}},
            "resources": {"gpusPerNode": 2},
            "output": {"pvc": {"claimName": "output", "path": name}},
        },
    }


# --- install ---------------------------------------------------------------------------------


def test_install_creates_the_operator_objects(kubectl: Any, release: Release) -> None:
    notes = release.install_output  # NOTES.txt: the next commands
    assert f"kubectl -n {release.namespace} rollout status deployment/{RELEASE}" in notes
    assert "kubectl get finetunejobs -w" in notes
    ns = release.namespace
    for kind in ("deployment", "serviceaccount", "service"):
        kubectl("get", kind, RELEASE if kind != "service" else f"{RELEASE}-metrics", "-n", ns)
    for kind in ("clusterrole", "clusterrolebinding"):
        kubectl("get", kind, RELEASE)
    for crd in CRDS:
        kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
        meta = kubectl.json("get", "crd", crd)["metadata"]
        assert meta["annotations"]["meta.helm.sh/release-name"] == RELEASE
        assert "helm.sh/resource-policy" not in meta["annotations"]


def test_service_account_has_no_more_than_it_needs(kubectl: Any, release: Release) -> None:
    who = f"system:serviceaccount:{release.namespace}:{RELEASE}"

    def can(*args: str) -> bool:
        result = kubectl("auth", "can-i", *args, "--as", who, check=False)
        return result.stdout.strip() == "yes"

    assert can("patch", "finetunejobs.kubetune.io/status", "-n", "anywhere")
    assert can("create", "jobs.batch", "-n", "anywhere")
    assert can("delete", "jobs.batch", "-n", "anywhere")
    assert not can("get", "secrets", "-A")
    assert not can("delete", "pods", "-n", "anywhere")
    assert not can("delete", "finetunejobs.kubetune.io", "-n", "anywhere")
    assert not can("create", "clusterroles")
    assert not can("update", "deployments.apps", "-n", release.namespace)
    assert can("watch", "workloads.kueue.x-k8s.io", "-n", "anywhere")  # Kueue: read only
    assert not can("get", "workloads.kueue.x-k8s.io", "-n", "anywhere")
    assert not can("patch", "workloads.kueue.x-k8s.io", "-n", "anywhere")


def test_operator_with_chart_token_runs_a_finetunejob(
    kubectl: Any, namespace: str, chart_operator: OperatorProcess, wait_until: Wait
) -> None:
    create_pvcs(kubectl, namespace, {"models", "data", "output"})
    try:
        kubectl.apply(ftj_manifest("via-chart"), namespace=namespace)
        pod = wait_pod_running(kubectl, namespace, "via-chart", 0, wait_until)[0]
        assert pod["spec"]["nodeName"].startswith("kwok-gpu-")
        assert pod["spec"]["containers"][0]["image"] == TRAINER_IMAGE  # chart default, via env
        tolerations = pod["spec"]["tolerations"]
        assert {
            "key": "nvidia.com/gpu",
            "operator": "Exists",
            "effect": "NoSchedule",
        } in tolerations
        wait_phase(kubectl, namespace, "via-chart", "Running", wait_until)
        finish_pod(kubectl, namespace, pod["metadata"]["name"], 0)
        status = wait_phase(kubectl, namespace, "via-chart", "Succeeded", wait_until)
        assert status["attempts"][0]["result"] == "Succeeded"
        assert {"AttemptStarted", "Succeeded"} <= set(
            event_reasons(kubectl, namespace, "via-chart")
        )
        # An RBAC gap shows as a 403; a 403 for a namespace another test is deleting does not.
        log = [
            line
            for line in chart_operator.log_path.read_text(errors="replace").splitlines()
            if "because it is being terminated" not in line
        ]
        for problem in ("Forbidden", "forbidden", "Not enough permissions", " 403 "):
            hits = [line for line in log if problem in line]
            assert not hits, f"operator log mentions {problem!r}:\n" + "\n".join(hits[:5])
    finally:
        kubectl("delete", "finetunejobs", "--all", "-n", namespace, "--wait=false")
        delete_pvs(kubectl, namespace)


# --- upgrade ---------------------------------------------------------------------------------


def chart_with_new_crd_field(tmp_path: Path) -> Path:
    """A copy of the chart whose FineTuneJob CRD has one more spec property (version 0.1.1)."""
    copy = tmp_path / "kubetune"
    shutil.copytree(CHART, copy)
    chart_yaml = copy / "Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text().replace("version: 0.1.0", "version: 0.1.1"))
    crd = copy / "templates" / "crds" / "kubetune.io_finetunejobs.yaml"
    text = crd.read_text()
    anchor = "\n          spec:\n"  # openAPIV3Schema.properties.spec
    assert anchor in text, "the FineTuneJob CRD template changed shape; update this test"
    marker = "\n            properties:\n"
    at = text.index(marker, text.index(anchor)) + len(marker)
    prop = json.dumps({"type": "string", "description": "Added by the upgrade e2e test."})
    crd.write_text(text[:at] + f"              upgradeProbe: {prop}\n" + text[at:])
    return copy


def spec_properties(kubectl: Any) -> dict[str, Any]:
    crd = kubectl.json("get", "crd", "finetunejobs.kubetune.io")
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return dict(root["properties"]["spec"]["properties"])


def test_upgrade_updates_the_crd(
    kubectl: Any, release: Release, namespace: str, tmp_path: Path, wait_until: Wait
) -> None:
    kubectl.apply(ftj_manifest("survivor"), namespace=namespace)
    assert "upgradeProbe" not in spec_properties(kubectl)
    newer = chart_with_new_crd_field(tmp_path)
    release.helm("upgrade", RELEASE, str(newer), *values_args(release.namespace, keep=True))
    assert (
        spec_properties(kubectl)["upgradeProbe"]["description"] == "Added by the upgrade e2e test."
    )
    meta = kubectl.json("get", "crd", "finetunejobs.kubetune.io")["metadata"]
    assert meta["annotations"]["helm.sh/resource-policy"] == "keep"
    explained = wait_until(
        lambda: (
            "Added by the upgrade"
            in kubectl("explain", "finetunejob.spec.upgradeProbe", check=False).stdout
        ),
        what="kubectl explain to show the new field",
    )
    assert explained
    kubectl("get", "finetunejob", "survivor", "-n", namespace)  # objects survive an upgrade

    release.helm("upgrade", RELEASE, str(CHART), *values_args(release.namespace, keep=False))
    assert "upgradeProbe" not in spec_properties(kubectl)
    meta = kubectl.json("get", "crd", "finetunejobs.kubetune.io")["metadata"]
    assert "helm.sh/resource-policy" not in meta.get("annotations", {})
    history = release.helm("history", RELEASE, "-n", release.namespace, "-o", "json").stdout
    assert [r["chart"] for r in json.loads(history)] == [
        "kubetune-0.1.0",
        "kubetune-0.1.1",
        "kubetune-0.1.0",
    ]


# --- uninstall -------------------------------------------------------------------------------


def _gone(kubectl: Any, *args: str) -> bool:
    return kubectl("get", *args, check=False).returncode != 0


def test_uninstall_removes_operator_and_crds(
    kubectl: Any, release: Release, chart_operator: OperatorProcess, wait_until: Wait
) -> None:
    chart_operator.stop()  # its watches would only see the CRDs vanish
    release.helm("uninstall", RELEASE, "--namespace", release.namespace, "--wait", "--timeout=120s")
    ns = release.namespace
    assert _gone(kubectl, "deployment", RELEASE, "-n", ns)
    assert _gone(kubectl, "serviceaccount", RELEASE, "-n", ns)
    assert _gone(kubectl, "clusterrole", RELEASE) and _gone(kubectl, "clusterrolebinding", RELEASE)
    for crd in CRDS:
        wait_until(lambda crd=crd: _gone(kubectl, "crd", crd), timeout=120, what=f"{crd} deleted")


def test_uninstall_keeps_crds_by_default(kubectl: Any, cluster: Any) -> None:
    helm = _helm_runner(cluster)
    ns = f"kubetune-e2e-{uuid.uuid4().hex[:6]}"
    try:
        helm(
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            ns,
            "--create-namespace",
            "--take-ownership",
        )
        helm("uninstall", RELEASE, "--namespace", ns, "--wait", "--timeout=120s")
        assert _gone(kubectl, "deployment", RELEASE, "-n", ns)
        for crd in CRDS:  # crds.keep defaults to true: FineTuneJobs outlive the operator
            assert kubectl.json("get", "crd", crd)["metadata"]["name"] == crd
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")
