"""Named adapters and `runtime: vllm` against the real control plane (kwok GPU nodes).

The operator runs as a subprocess; kwok plays the kubelets, so no server process runs in the
pods: what this proves is the operator's side. A FineTuneJob's adapter and a claim's adapter go
into the ConfigMap the servers watch; a new run with a better evalLoss replaces the served one,
a worse run is refused (status reason and a PromotionRefused Event) while the ConfigMap keeps
the old folder; adding an adapter to the spec updates the ConfigMap and rolls nothing (one
ReplicaSet throughout). A `runtime: vllm` model's pods are scheduled onto kwok GPU nodes and
the ModelDeployment becomes Available; the vLLM container itself cannot run here (no GPU).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from operator_helpers import finish_pod, operator, wait_phase, wait_pod_running  # noqa: F401
from test_modeldeployment import (
    EXAMPLES,
    Wait,
    mdep,
    mdep_event_reasons,
    ns,  # noqa: F401  (fixture)
    replica_sets,
    wait_mdep,
)

pytestmark = pytest.mark.e2e
Json = dict[str, Any]


def adapters_json(kubectl: Any, ns: str) -> dict[str, str]:  # noqa: F811
    cm = kubectl.json("get", "configmap", "support-base-adapters", "-n", ns)
    return dict(json.loads(cm["data"]["adapters.json"]))


def new_run(kubectl: Any, ns: str, folder: str, when: str, loss: float) -> None:  # noqa: F811
    patch = {
        "status": {
            "output": {"adapterPath": f"pvc://kubetune-output/{folder}/adapter"},
            "completionTime": when,
            "metrics": {"evalLoss": loss},
        }
    }
    kubectl(
        "patch", "finetunejob", "credit-card-faq", "-n", ns, "--subresource=status",
        "--type=merge", "-p", json.dumps(patch),
    )  # fmt: skip


def faq_status(kubectl: Any, ns: str) -> Json:  # noqa: F811
    status = mdep(kubectl, ns, "support").get("status") or {}
    models = status.get("models") or [{}]
    return next((a for a in models[0].get("adapters") or [] if a["name"] == "faq"), {})


def live_pods(kubectl: Any, ns: str, selector: str) -> list[Json] | None:  # noqa: F811
    """The pods matching `selector` that are not being deleted, once there is exactly one."""
    items = kubectl.json("get", "pods", "-n", ns, "-l", selector)["items"]
    live = [p for p in items if not p["metadata"].get("deletionTimestamp")]
    return live if len(live) == 1 and len(items) == 1 else None


def test_named_adapters_change_without_a_rollout_and_promotion_is_gated(
    kubectl: Any,
    ns: str,  # noqa: F811
    wait_until: Wait,
) -> None:
    kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "finetunejob-credit-card-faq.yaml"))
    kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "modeldeployment-multi-lora.yaml"))
    wait_until(lambda: faq_status(kubectl, ns).get("state") == "Pending", timeout=90,
               what="faq Pending while its FineTuneJob runs")  # fmt: skip
    pod = wait_pod_running(kubectl, ns, "credit-card-faq", 0, wait_until)[0]
    finish_pod(kubectl, ns, pod["metadata"]["name"], 0)
    wait_phase(kubectl, ns, "credit-card-faq", "Succeeded", wait_until)
    wait_mdep(kubectl, ns, "support", "Available", wait_until)
    new_run(kubectl, ns, "run-2", "2030-01-01T00:00:00Z", 1.30)
    wait_until(lambda: faq_status(kubectl, ns).get("evalLoss") == 1.30, timeout=90,
               what="run-2 promoted")  # fmt: skip
    assert adapters_json(kubectl, ns)["faq"] == "/mnt/pvc/kubetune-output/run-2/adapter"
    assert len(replica_sets(kubectl, ns, "support-base")) == 1

    new_run(kubectl, ns, "run-3", "2030-01-02T00:00:00Z", 1.50)  # worse by more than 0.02
    held = wait_until(
        lambda: (s := faq_status(kubectl, ns)).get("reason", "").startswith("not promoted") and s,
        timeout=90, what="run-3 refused",
    )  # fmt: skip
    assert held["revision"] == "2030-01-01T00:00:00Z" and held["state"] == "Configured"
    assert adapters_json(kubectl, ns)["faq"] == "/mnt/pvc/kubetune-output/run-2/adapter"
    wait_until(lambda: "PromotionRefused" in mdep_event_reasons(kubectl, ns, "support"),
               timeout=60, what="PromotionRefused Event")  # fmt: skip

    hr = {"name": "hr", "pvc": {"claimName": "kubetune-output", "path": "hr/adapter"}}
    add = [{"op": "add", "path": "/spec/models/0/adapters/-", "value": hr}]
    kubectl("patch", "modeldeployment", "support", "-n", ns, "--type=json", "-p", json.dumps(add))
    wait_until(lambda: "hr" in adapters_json(kubectl, ns), timeout=90, what="hr in the ConfigMap")
    assert len(replica_sets(kubectl, ns, "support-base")) == 1  # nothing rolled
    deployment = kubectl.json("get", "deployment", "support-base", "-n", ns)
    assert deployment["metadata"]["generation"] == 1


def test_a_vllm_model_is_scheduled_on_gpu_nodes(
    kubectl: Any,
    ns: str,  # noqa: F811
    wait_until: Wait,
) -> None:
    kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "finetunejob-credit-card-faq.yaml"))
    kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "modeldeployment-vllm.yaml"))
    pod = wait_pod_running(kubectl, ns, "credit-card-faq", 0, wait_until)[0]
    finish_pod(kubectl, ns, pod["metadata"]["name"], 0)
    wait_phase(kubectl, ns, "credit-card-faq", "Succeeded", wait_until)
    # the faq adapter became ready after the first pod started (vLLM takes LoRA modules as
    # flags, so that rolls the Deployment): wait for the one live pod that serves it (the
    # ModelDeployment may still say Available from before the roll, with the old pod alive)
    pods = wait_until(
        lambda: (p := live_pods(kubectl, ns, "kubetune.io/model=large"))
        and any(a.startswith("faq=") for a in p[0]["spec"]["containers"][0]["args"])
        and p[0]["status"].get("phase") == "Running"
        and p,
        timeout=90, what="one live vLLM pod serving the faq adapter",
    )  # fmt: skip
    status = wait_mdep(kubectl, ns, "chat-gpu", "Available", wait_until)
    assert status["ready"] == "2/2"
    assert len(pods) == 1 and pods[0]["status"]["phase"] == "Running"
    node = kubectl.json("get", "node", pods[0]["spec"]["nodeName"])
    assert int(node["status"]["allocatable"].get("nvidia.com/gpu", "0")) >= 1
    c = pods[0]["spec"]["containers"][0]
    assert c["command"] == ["vllm", "serve"] and "--enable-lora" in c["args"]
    assert any(a.startswith("faq=") for a in c["args"])  # the FineTuneJob's adapter is served
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
