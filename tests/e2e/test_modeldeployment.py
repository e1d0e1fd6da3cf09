"""ModelDeployments against the real control plane, the operator run as a subprocess.

kwok plays the kubelets: a bound pod becomes Running and Ready at once (its `pod-ready`
stage), and a Ready condition patched to False stays False, as a failing readiness probe
would leave it. The real Deployment and ReplicaSet controllers do the rest. Covered: the
routed example (servers, Services, router, Available with the endpoint, `kubectl get mdep`,
Degraded when a pod stops being ready and back), and a ModelDeployment serving a FineTuneJob's
adapter (Pending/WaitingForFineTuneJob, rollout once the job Succeeded, a roll to a new
adapter when the job's status reports a new one, and a real second run: the job deleted and
re-created with a new output folder while the model keeps serving, then the roll); pruning to
one model; cascade delete; invalid specs as Failed/InvalidSpec naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_helpers import (
    EXAMPLES,
    OperatorProcess,
    create_pvcs,
    delete_pvs,
    finish_pod,
    operator,  # noqa: F401  (module fixture)
    trainer_pods,
    wait_phase,
    wait_pod_running,
)

pytestmark = pytest.mark.e2e
Wait = Callable[..., Any]
Json = dict[str, Any]
CRD = (
    Path(__file__).resolve().parents[2] / "manifests" / "crds" / "kubetune.io_modeldeployments.yaml"
)
LABEL = "kubetune.io/modeldeployment"


def example(name: str) -> Json:
    return dict(yaml.safe_load((EXAMPLES / name).read_text()))


@pytest.fixture
def ns(kubectl: Any, namespace: str, operator: OperatorProcess) -> Iterator[str]:  # noqa: F811
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "crd/modeldeployments.kubetune.io")
    create_pvcs(kubectl, namespace, {"kubetune-models", "kubetune-data", "kubetune-output"})
    yield namespace
    kubectl("delete", "modeldeployments,finetunejobs", "--all", "-n", namespace, "--wait=false")
    delete_pvs(kubectl, namespace)


def mdep(kubectl: Any, ns: str, name: str) -> Json:
    return dict(kubectl.json("get", "modeldeployment", name, "-n", ns))


def wait_mdep(kubectl: Any, ns: str, name: str, phase: str, wait_until: Wait) -> Json:
    def reached() -> Json | None:
        status = mdep(kubectl, ns, name).get("status") or {}
        return status if status.get("phase") == phase else None

    return dict(wait_until(reached, timeout=90, what=f"ModelDeployment {name} {phase}"))


def owned(kubectl: Any, ns: str, name: str, kinds: str = "deployments,services") -> list[str]:
    items = kubectl.json("get", kinds, "-n", ns, "-l", f"{LABEL}={name}")["items"]
    return sorted(f"{i['kind']}/{i['metadata']['name']}" for i in items)


def set_ready(kubectl: Any, ns: str, pod: str, ready: bool) -> None:
    """Flip the pod's Ready condition as the kubelet does after readiness probes."""
    value = "True" if ready else "False"
    conditions = [{"type": t, "status": value} for t in ("Ready", "ContainersReady")]
    kubectl(
        "patch", "pod", pod, "-n", ns, "--subresource=status", "--type=strategic",
        "-p", json.dumps({"status": {"conditions": conditions}}),
    )  # fmt: skip


def replica_sets(kubectl: Any, ns: str, deployment: str) -> list[Json]:
    items = kubectl.json("get", "replicasets", "-n", ns)["items"]
    return [
        rs
        for rs in items
        if any(o["name"] == deployment for o in rs["metadata"].get("ownerReferences", []))
    ]


def test_routed_example_serves_behind_the_router(kubectl: Any, ns: str, wait_until: Wait) -> None:
    kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "modeldeployment-routed.yaml"))
    expected = [
        f"{kind}/qwen3-routed-{m}"
        for kind in ("Deployment", "Service")
        for m in ("large", "router", "small")
    ]
    wait_until(lambda: owned(kubectl, ns, "qwen3-routed") == expected, what="children")
    status = wait_mdep(kubectl, ns, "qwen3-routed", "Available", wait_until)
    endpoint = f"http://qwen3-routed-router.{ns}.svc:8000/v1"
    assert (status["ready"], status["endpoint"]) == ("3/3", endpoint)
    assert [(m["name"], m["readyReplicas"]) for m in status["models"]] == [
        ("large", 1),
        ("small", 2),
    ]
    assert (
        status["observedGeneration"] == mdep(kubectl, ns, "qwen3-routed")["metadata"]["generation"]
    )
    row = printed_row_mdep(kubectl, ns, "qwen3-routed")
    assert (row["PHASE"], row["READY"], row["ENDPOINT"]) == ("Available", "3/3", endpoint)

    router = kubectl.json("get", "deployment", "qwen3-routed-router", "-n", ns)
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "small=http://qwen3-routed-small:8000" in args and "--threshold" in args
    svc = kubectl.json("get", "service", "qwen3-routed-large", "-n", ns)
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"

    selector = f"{LABEL}=qwen3-routed,kubetune.io/model=small"
    pod = kubectl.json("get", "pods", "-n", ns, "-l", selector)["items"][0]["metadata"]["name"]
    set_ready(kubectl, ns, pod, False)
    status = wait_mdep(kubectl, ns, "qwen3-routed", "Degraded", wait_until)
    assert status["ready"] == "2/3" and "small" in status["message"]
    set_ready(kubectl, ns, pod, True)
    wait_mdep(kubectl, ns, "qwen3-routed", "Available", wait_until)
    reasons = mdep_event_reasons(kubectl, ns, "qwen3-routed")
    assert {"Available", "Degraded"} <= set(reasons), reasons


def printed_row_mdep(kubectl: Any, ns: str, name: str) -> dict[str, str]:
    """`kubectl get mdep NAME` as column -> value (printed_row reads `get ftj`)."""
    header, row = kubectl("get", "mdep", name, "-n", ns).stdout.splitlines()[:2]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    bounds = [*starts[1:], max(len(row), len(header)) + 1]
    return {header[s:e].strip(): row[s:e].strip() for s, e in zip(starts, bounds, strict=True)}


def mdep_event_reasons(kubectl: Any, ns: str, name: str) -> list[str]:
    selector = f"involvedObject.kind=ModelDeployment,involvedObject.name={name}"
    items = kubectl.json("get", "events", "-n", ns, "--field-selector", selector)["items"]
    return [e["reason"] for e in items]


def test_serves_a_finetunejob_adapter_and_rolls_to_a_new_one(
    kubectl: Any, ns: str, wait_until: Wait
) -> None:
    kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "finetunejob-credit-card-faq.yaml"))
    kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "modeldeployment-from-finetunejob.yaml"))
    status = wait_mdep(kubectl, ns, "credit-card-faq", "Pending", wait_until)
    assert status["conditions"][0]["reason"] == "WaitingForFineTuneJob"
    assert owned(kubectl, ns, "credit-card-faq", "deployments") == []

    pod = wait_pod_running(kubectl, ns, "credit-card-faq", 0, wait_until)[0]
    finish_pod(kubectl, ns, pod["metadata"]["name"], 0)
    job = wait_phase(kubectl, ns, "credit-card-faq", "Succeeded", wait_until)
    first = job["output"]["adapterPath"]
    assert first == "pvc://kubetune-output/credit-card-faq/adapter"
    status = wait_mdep(kubectl, ns, "credit-card-faq", "Available", wait_until)
    assert status["models"][0]["adapter"] == first and status["ready"] == "2/2"
    deployment = kubectl.json("get", "deployment", "credit-card-faq-faq", "-n", ns)
    pod_spec = deployment["spec"]["template"]["spec"]
    args = pod_spec["containers"][0]["args"]
    assert args[args.index("--adapter") + 1] == "/mnt/pvc/kubetune-output/credit-card-faq/adapter"
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
              for v in pod_spec["volumes"] if "persistentVolumeClaim" in v}  # fmt: skip
    assert claims == {"kubetune-models": True, "kubetune-output": True}
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert len(replica_sets(kubectl, ns, "credit-card-faq-faq")) == 1

    # A second run's result, written where the FineTuneJob operator writes it.
    second = "pvc://kubetune-output/credit-card-faq/run-2/adapter"
    patch = {
        "status": {"output": {"adapterPath": second}, "completionTime": "2030-01-01T00:00:00Z"}
    }
    kubectl(
        "patch", "finetunejob", "credit-card-faq", "-n", ns, "--subresource=status",
        "--type=merge", "-p", json.dumps(patch),
    )  # fmt: skip

    def rolled() -> Json | None:
        status = mdep(kubectl, ns, "credit-card-faq").get("status") or {}
        ok = status.get("phase") == "Available" and status["models"][0].get("adapter") == second
        return status if ok else None

    wait_until(rolled, timeout=90, what="roll to the second adapter")
    sets = replica_sets(kubectl, ns, "credit-card-faq-faq")
    assert len(sets) == 2
    current = max(
        sets, key=lambda rs: int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"])
    )
    assert current["spec"]["template"]["metadata"]["annotations"]["kubetune.io/adapter"] == second
    args = current["spec"]["template"]["spec"]["containers"][0]["args"]
    assert (
        args[args.index("--adapter") + 1]
        == "/mnt/pvc/kubetune-output/credit-card-faq/run-2/adapter"
    )
    reasons = mdep_event_reasons(kubectl, ns, "credit-card-faq")
    assert {"WaitingForFineTuneJob", "Available"} <= set(reasons), reasons


def test_invalid_spec_fails_naming_the_field(kubectl: Any, ns: str, wait_until: Wait) -> None:
    body = example("modeldeployment-routed.yaml")
    body["metadata"] = {"name": "bad"}
    body["spec"]["models"][0]["name"] = "router"  # collides with the router's name
    body["spec"]["routing"] = {"strategy": "single", "default": "small"}
    kubectl.apply(body, namespace=ns)
    status = wait_mdep(kubectl, ns, "bad", "Failed", wait_until)
    assert status["conditions"][0]["reason"] == "InvalidSpec"
    assert "spec.models.0.name" in status["message"]
    assert owned(kubectl, ns, "bad") == []


def test_fewer_models_prune_the_router_and_delete_cascades(
    kubectl: Any, ns: str, wait_until: Wait
) -> None:
    kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "modeldeployment-routed.yaml"))
    wait_mdep(kubectl, ns, "qwen3-routed", "Available", wait_until)
    patch = {"spec": {"models": [{"name": "large", "model": "Qwen/Qwen3-8B", "gpus": 1}],
                      "routing": {"strategy": "single", "default": "large"}}}  # fmt: skip
    kubectl("patch", "mdep", "qwen3-routed", "-n", ns, "--type=merge", "-p", json.dumps(patch))
    expected = ["Deployment/qwen3-routed-large", "Service/qwen3-routed-large"]
    wait_until(lambda: owned(kubectl, ns, "qwen3-routed") == expected, what="pruned children")

    def single() -> Json | None:
        status = mdep(kubectl, ns, "qwen3-routed").get("status") or {}
        ok = status.get("phase") == "Available" and status.get("ready") == "1/1"
        return status if ok else None

    status = wait_until(single, timeout=90, what="one model Available")
    assert status["endpoint"] == f"http://qwen3-routed-large.{ns}.svc:8000/v1"
    kubectl("delete", "mdep", "qwen3-routed", "-n", ns, "--wait=true")
    wait_until(lambda: owned(kubectl, ns, "qwen3-routed") == [], what="garbage collection")


def test_a_bad_quantity_fails_naming_the_field(kubectl: Any, ns: str, wait_until: Wait) -> None:
    body = example("modeldeployment-routed.yaml")
    body["metadata"] = {"name": "bad-quantity"}
    body["spec"]["models"][0]["resources"] = {"requests": {"memory": "lots"}}
    refused = kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body), check=False)
    assert refused.returncode != 0  # the quantity pattern is in the CRD (kubetune_api.formats)
    assert "spec.models[0].resources.requests.memory" in refused.stderr, refused.stderr
    assert owned(kubectl, ns, "bad-quantity", "deployments") == []


def test_a_real_second_run_rolls_and_the_model_serves_meanwhile(
    kubectl: Any, ns: str, wait_until: Wait
) -> None:
    """Delete the FineTuneJob, re-create it with a new output folder, run it to success."""
    job = yaml.safe_load((EXAMPLES / "finetunejob-credit-card-faq.yaml").read_text())
    kubectl.apply(job, namespace=ns)
    kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "modeldeployment-from-finetunejob.yaml"))
    run_to_success(kubectl, ns, wait_until)
    wait_mdep(kubectl, ns, "credit-card-faq", "Available", wait_until)

    kubectl("delete", "finetunejob", "credit-card-faq", "-n", ns, "--wait=true")
    wait_until(lambda: not trainer_pods(kubectl, ns, "credit-card-faq"), what="old pods gone")
    status = mdep(kubectl, ns, "credit-card-faq")["status"]
    assert status["phase"] == "Available"  # still serving the first adapter
    assert owned(kubectl, ns, "credit-card-faq", "deployments") == [
        "Deployment/credit-card-faq-faq"
    ]

    job["spec"]["output"]["pvc"]["path"] = "credit-card-faq-v2"
    kubectl.apply(job, namespace=ns)
    second = run_to_success(kubectl, ns, wait_until)
    assert second == "pvc://kubetune-output/credit-card-faq-v2/adapter"

    def rolled() -> Json | None:
        status = mdep(kubectl, ns, "credit-card-faq").get("status") or {}
        ok = status.get("phase") == "Available" and status["models"][0].get("adapter") == second
        return status if ok else None

    wait_until(rolled, timeout=90, what="roll to the second run's adapter")
    assert len(replica_sets(kubectl, ns, "credit-card-faq-faq")) == 2


def run_to_success(kubectl: Any, ns: str, wait_until: Wait) -> str:
    """Drive the FineTuneJob's trainer pod to exit 0; its adapterPath."""
    pod = wait_pod_running(kubectl, ns, "credit-card-faq", 0, wait_until)[0]
    finish_pod(kubectl, ns, pod["metadata"]["name"], 0)
    status = wait_phase(kubectl, ns, "credit-card-faq", "Succeeded", wait_until)
    return str(status["output"]["adapterPath"])
