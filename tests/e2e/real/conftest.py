"""Fixtures of the real-node tier: our images run as real containers on the real node.

`hack/cluster.sh up` starts one real kubelet node (containerd + runc, bridge CNI, kube-proxy,
CoreDNS) beside the kwok nodes, tainted so that pods the kwok tests drive by hand never land
on it. Pods in a namespace labelled ``kubetune.io/real-node=true`` get the toleration, a node
selector for it and ``HF_HUB_OFFLINE=1`` from the cluster's MutatingAdmissionPolicy; nothing a
pod does leaves the host (no route out of the bridge, DNS answers the cluster domain only).

Fixtures (all package-scoped: the tier shares one operator release):

* ``real_node``: the real Node object; fails when it or our images are missing (``make images``,
  then ``make cluster-up``), skips only when ``KUBETUNE_REAL_NODES=0`` says there is none.
* ``real_ns``: one namespace for the tier, labelled for the real node.
* ``release``: ``helm install`` of charts/kubetune into ``real_ns`` with the built operator image
  (the chart's defaults, watching only ``real_ns`` so the kwok tier's operators never meet it).
* ``volumes``: ``local`` PersistentVolumes on the real node (folders on this host) and claims.

Run with ``pytest -m real tests/e2e/real`` (part of ``make test``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from real_helpers import (
    CHART,
    CRDS,
    OPERATOR_IMAGE,
    REAL_LABEL,
    RELEASE,
    REPO,
    RUNTIME_IMAGE,
    UID,
    Kubectl,
    Release,
    Trained,
    Volumes,
    ftj_manifest,
    pod_logs,
    printed_row,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e/real is of the real tier (and only of it)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.real)
            item.add_marker(pytest.mark.timeout(1200))


def _helm(cluster: Any) -> Callable[..., subprocess.CompletedProcess[str]]:
    env = cluster.env()
    path = shutil.which("helm", path=env["PATH"])
    assert path, "no helm on the cluster's PATH (hack/cluster.sh builds it)"

    def helm(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([path, *args], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
        return result

    return helm


@pytest.fixture(scope="package")
def real_node(kubectl: Kubectl) -> dict[str, Any]:
    if os.environ.get("KUBETUNE_REAL_NODES") == "0":
        pytest.skip("KUBETUNE_REAL_NODES=0: the cluster has no real node")
    # A kubelet just started reports Ready before its image list (make cluster-up imports the
    # images into containerd first; the node status lists them a few seconds later).
    deadline = time.monotonic() + 120
    while True:
        nodes = kubectl.json("get", "nodes", "-l", f"{REAL_LABEL}=true")["items"]
        node = dict(nodes[0]) if nodes else {}
        status = node.get("status", {})
        ready = {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready")
        held = {n for image in status.get("images") or [] for n in image.get("names") or []}
        missing = {OPERATOR_IMAGE, RUNTIME_IMAGE} - held
        if (nodes and ready == "True" and not missing) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert nodes, "no real node: `make images` then `make cluster-up` (KUBETUNE_REAL_NODES=1)"
    assert ready == "True", f"real node {node['metadata']['name']} is not Ready"
    assert not missing, f"the real node lacks {sorted(missing)}: run `make images`"
    return node


@pytest.fixture(scope="package")
def real_ns(kubectl: Kubectl, real_node: dict[str, Any]) -> Iterator[str]:
    name = f"real-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, f"{REAL_LABEL}=true", "kubetune.io/e2e=true")
    yield name
    kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="package")
def release(cluster: Any, kubectl: Kubectl, real_ns: str) -> Iterator[Release]:
    """The chart, installed as a user would, with the CRDs applied from manifests/crds (the
    kwok tier applies the same files; a chart-owned copy would fight over them)."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    helm = _helm(cluster)
    helm(
        "install", RELEASE, str(CHART), "--namespace", real_ns,
        "--set", "crds.enabled=false", "--set", f"watchNamespaces={{{real_ns}}}",
        "--set", "defaults.gpuMemory=",
        "--set", f"defaults.podNetworks={{{cluster.pod_networks or ''}}}",
    )  # fmt: skip
    # Not `helm install --wait`: an operator that never gets Ready is test_operator_in_cluster's
    # failure to report (with its log), not a setup error of every test here.
    kubectl(
        "rollout", "status", f"deployment/{RELEASE}", "-n", real_ns, "--timeout=90s",
        check=False, timeout=180,
    )  # fmt: skip
    yield Release(real_ns, RELEASE, helm)
    logs = kubectl("logs", f"deployment/{RELEASE}", "-n", real_ns, "--tail=80", check=False)
    print(f"--- operator log (in-cluster) ---\n{logs.stdout}{logs.stderr}")
    subprocess.run(
        [shutil.which("helm", path=cluster.env()["PATH"]) or "helm", "uninstall", RELEASE,
         "--namespace", real_ns, "--wait", "--timeout", "60s"],
        env=cluster.env(), capture_output=True, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="package")
def reconciler(
    cluster: Any, kubectl: Kubectl, release: Release, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Who reconciles the tier's FineTuneJobs and ModelDeployments: the chart's in-cluster
    operator when it is Ready; otherwise (test_operator_in_cluster fails and says why) the
    same operator code as a local process watching only this namespace, with the chart's
    Deployment scaled to 0, so the trainer and server pods are still tested for real."""
    ready = kubectl.json("get", "deployment", RELEASE, "-n", release.namespace)["status"]
    if ready.get("readyReplicas"):
        yield "in-cluster"
        return
    print("WARNING: the chart's operator is not Ready; a local operator process reconciles")
    kubectl("scale", f"deployment/{RELEASE}", "-n", release.namespace, "--replicas=0")
    from operator_helpers import OperatorProcess  # tests/e2e: the kwok tier's helper

    env = {**cluster.env(), "KUBETUNE_SERVER_IMAGE": RUNTIME_IMAGE}
    proc = OperatorProcess(
        env,
        tmp_path_factory.mktemp("real-operator") / "operator.log",
        ["--trainer-image", RUNTIME_IMAGE, "--namespace", release.namespace],
    )
    proc.start()
    yield "local process"
    proc.stop()
    print(f"--- local operator log ({proc.log_path}) ---\n{proc.log_tail()}")


@pytest.fixture(scope="package")
def volumes(
    kubectl: Kubectl,
    real_ns: str,
    real_node: dict[str, Any],
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Volumes]:
    """Claims `models` (the tiny Qwen3 under tiny-qwen3/), `data` (examples/data split per
    language under faq/) and `output` (writable by uid 1000), as `local` PVs on the real node."""
    root = tmp_path_factory.mktemp("real-volumes")
    root.chmod(0o755)
    shutil.copytree(tiny_model_dir, root / "models" / "tiny-qwen3")
    faq = root / "data" / "faq"
    faq.mkdir(parents=True)
    for split in ("train", "eval"):
        shutil.copy(REPO / "examples" / "data" / f"{split}.jsonl", faq / f"{split}.jsonl")
    (faq / "broken.jsonl").write_text('{"not": "a chat example"\n')
    (root / "output").mkdir()
    os.chown(root / "output", UID, UID)
    for folder in (root, *root.rglob("*")):
        folder.chmod(folder.stat().st_mode | 0o755 if folder.is_dir() else 0o644)
    node = real_node["metadata"]["name"]
    docs: list[dict[str, Any]] = []
    for claim in ("models", "data", "output"):
        pv = f"{real_ns}-{claim}"
        affinity = {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
        docs += [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv, "labels": {"kubetune.io/e2e-namespace": real_ns}},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "local": {"path": str(root / claim)},
                    "nodeAffinity": {
                        "required": {"nodeSelectorTerms": [{"matchExpressions": [affinity]}]}
                    },
                    "claimRef": {"namespace": real_ns, "name": claim},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": real_ns},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "volumeName": pv,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        ]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    yield Volumes(root)
    kubectl("delete", "pv", "-l", f"kubetune.io/e2e-namespace={real_ns}", "--wait=false",
            check=False)  # fmt: skip


@pytest.fixture(scope="package")
def trained(
    kubectl: Kubectl,
    release: Release,
    reconciler: str,
    volumes: Volumes,
    wait_until: Callable[..., Any],
) -> Trained:
    """`faq` trained in a real pod of the runtime image (CPU torch), sampled until it ends."""
    ns, name = release.namespace, "faq"
    kubectl.apply(ftj_manifest(name), namespace=ns)
    rows: list[dict[str, str]] = []
    logs = ""

    def finished() -> dict[str, Any] | None:
        nonlocal logs
        rows.append(printed_row(kubectl, ns, name))
        if not logs or "step" not in logs:
            logs = pod_logs(kubectl, ns, f"job/{name}-a0")
        status = kubectl.json("get", "ftj", name, "-n", ns).get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = dict(wait_until(finished, timeout=900, what=f"FineTuneJob {name} to finish"))
    logs = pod_logs(kubectl, ns, f"job/{name}-a0") or logs
    adapter = volumes.path("output") / name / "adapter"
    return Trained(name, status, rows, logs, adapter)
