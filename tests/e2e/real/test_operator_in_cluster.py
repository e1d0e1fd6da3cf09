"""The operator as the chart's Deployment on the real node: our operator image, its
ServiceAccount token, a read-only root filesystem, probes that pass, and it reconciles."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from real_helpers import OPERATOR_IMAGE, Release, ftj_manifest


def test_chart_operator_runs_on_the_real_node(
    kubectl: Any, release: Release, real_node: dict[str, Any]
) -> None:
    pods = kubectl.json(
        "get", "pods", "-n", release.namespace, "-l", "app.kubernetes.io/name=kubetune"
    )["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    pod = pods[0]
    spec, status = pod["spec"], pod["status"]
    assert spec["nodeName"] == real_node["metadata"]["name"]
    assert spec["serviceAccountName"] == release.deployment
    container = spec["containers"][0]
    assert container["image"] == OPERATOR_IMAGE
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container["env"]
    # Ready means the kubelet's real readiness probe got through to kopf's /healthz.
    ready = {c["type"]: c["status"] for c in status["conditions"]}
    assert ready["Ready"] == "True", status
    state = status["containerStatuses"][0]
    assert state["restartCount"] == 0, state
    assert state["imageID"], state  # a real image, resolved by containerd
    # The image's user, enforced by the kubelet (runAsNonRoot on a numeric USER).
    out = kubectl("exec", "-n", release.namespace, pod["metadata"]["name"], "--", "id", "-u")
    assert out.stdout.strip() == "1000"
    denied = kubectl(
        "exec", "-n", release.namespace, pod["metadata"]["name"], "--",
        "python", "-c", "open('/app/x', 'w')", check=False,
    )  # fmt: skip
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr


def test_chart_operator_reconciles_a_finetunejob(
    kubectl: Any, release: Release, wait_until: Callable[..., Any]
) -> None:
    """A job whose claims do not exist: the in-cluster operator, with nothing but the chart's
    RBAC, creates its children and reports the pod that cannot start."""
    ns, name = release.namespace, "no-claims"
    manifest = ftj_manifest(name)
    for source in ("model", "dataset"):
        del manifest["spec"][source]
    manifest["spec"]["model"] = {
        "name": "tiny-qwen3",
        "source": {"pvc": {"claimName": "missing-models", "path": "tiny-qwen3"}},
    }
    manifest["spec"]["dataset"] = {"train": {"pvc": {"claimName": "missing", "path": "x.jsonl"}}}
    manifest["spec"]["output"] = {"pvc": {"claimName": "missing-output"}}
    kubectl.apply(manifest, namespace=ns)
    try:
        job = wait_until(
            lambda: kubectl("get", "job", f"{name}-a0", "-n", ns, check=False).returncode == 0,
            timeout=60,
            what="the operator to create the attempt's Job",
        )
        assert job
        status = wait_until(
            lambda: (kubectl.json("get", "ftj", name, "-n", ns).get("status") or {}).get("phase"),
            timeout=60,
            what="a status phase",
        )
        assert status in ("Pending", "Running"), status
        account = kubectl.json("get", "serviceaccount", f"{name}-trainer", "-n", ns)
        assert account["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
    finally:
        kubectl("delete", "ftj", name, "-n", ns, "--wait=false", check=False)
