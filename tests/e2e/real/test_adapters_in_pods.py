"""Named adapters in real server pods: the in-cluster operator reads each pod's adapter state.

A ModelDeployment with two named adapters on the tiny Qwen3: `faq`, the real-pod FineTuneJob's
adapter, and `missing`, a folder that does not exist. The chart's operator (in a pod on the real
node, allowed to contact pods on the bridge by `defaults.podNetworks`) asks the server pod's
`GET /adapterz` over the pod network: `faq` is Loaded on that pod, `missing` Failed with the
server's load error, which names no folder (the endpoint needs no key), and the ModelDeployment
is Degraded saying which adapter failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from real_helpers import Release, Trained

NAME = "named"


def manifest() -> dict[str, Any]:
    base = {
        "name": "base",
        "model": "/mnt/models/tiny-qwen3",
        "modelPvc": {"claimName": "models", "path": "tiny-qwen3"},
        "quantization": "none",
        "replicas": 1,
        "gpus": 0,  # CPU torch on the real node
        "adapters": [
            {"name": "faq", "fineTuneJob": "faq"},
            {"name": "missing", "pvc": {"claimName": "output", "path": "no-such-adapter"}},
        ],
    }
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME},
        "spec": {"models": [base], "server": {"maxNewTokens": 4}},
    }


def test_the_operator_reads_each_server_pods_adapter_state(
    kubectl: Any, release: Release, trained: Trained, wait_until: Callable[..., Any]
) -> None:
    assert trained.status["phase"] == "Succeeded", "the FineTuneJob to serve did not succeed"
    ns = release.namespace
    kubectl.apply(manifest(), namespace=ns)
    try:

        def reported() -> dict[str, Any] | None:
            status = kubectl.json("get", "mdep", NAME, "-n", ns).get("status") or {}
            adapters = {
                a["name"]: a for a in (status.get("models") or [{}])[0].get("adapters") or []
            }
            done = adapters.get("faq", {}).get("state") == "Loaded"
            return status if done and adapters.get("missing", {}).get("state") == "Failed" else None

        status = wait_until(reported, timeout=300, what="both adapters reported by the pod")
        pods = kubectl.json("get", "pods", "-n", ns, "-l", "kubetune.io/model=base")["items"]
        live = [p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")]
        faq, missing = status["models"][0]["adapters"]
        assert [(r["pod"], r["state"]) for r in faq["replicas"]] == [(live[0], "Loaded")], faq
        (replica,) = missing["replicas"]
        assert replica["pod"] == live[0] and replica["state"] == "Failed", missing
        assert replica["reason"] and "no-such-adapter" not in replica["reason"], replica
        assert missing["reason"] == f"pod {live[0]}: {replica['reason']}"
        assert status["phase"] == "Degraded" and "adapter missing" in status["message"], status
    finally:
        kubectl("delete", "mdep", NAME, "-n", ns, "--wait=false", check=False)
