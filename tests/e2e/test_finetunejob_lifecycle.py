"""A FineTuneJob's life, with the pod driven as a kubelet would drive it.

Running -> Succeeded; OutOfMemory -> Retrying with a halved micro-batch (visible in the new
attempt's ConfigMap and in status.attempts) -> NaNLoss -> Retrying with the learning rate divided by 3
-> Failed after maxRetries; config errors fail at once; suspend and resume; image pull errors
become conditions; deletion cascades to the children but not to the output volume.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml
from operator_helpers import (
    OperatorProcess,
    children,
    create_pvcs,
    delete_pvs,
    event_reasons,
    finish_pod,
    operator,  # noqa: F401  (module fixture)
    set_waiting,
    status_of,
    termination,
    trainer_pods,
    wait_phase,
    wait_pod_running,
)

pytestmark = pytest.mark.e2e
Wait = Callable[..., Any]


def manifest(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {
            "name": "Qwen/Qwen3-8B",
            "source": {"pvc": {"claimName": "models", "path": "Qwen3-8B"}},
        },
        "dataset": {"train": {"pvc": {"claimName": "data", "path": "faq/train.jsonl"}}},
        "training": {"microBatchSize": 8, "gradientAccumulationSteps": 2, "learningRate": 3e-4},
        "resources": {"gpusPerNode": 1},
        "output": {"pvc": {"claimName": "output", "path": name}},
        "retry": {"maxRetries": 2},
    }
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {**base, **spec},
    }


@pytest.fixture
def ns(kubectl: Any, namespace: str, operator: OperatorProcess) -> Any:  # noqa: F811
    create_pvcs(kubectl, namespace, {"models", "data", "output"})
    yield namespace
    kubectl("delete", "finetunejobs", "--all", "-n", namespace, "--wait=false")
    delete_pvs(kubectl, namespace)


def config(kubectl: Any, ns: str, name: str) -> dict[str, Any]:
    data = kubectl.json("get", "configmap", name, "-n", ns)["data"]["config.yaml"]
    return dict(yaml.safe_load(data))


def fail_attempt(
    kubectl: Any,
    ns: str,
    name: str,
    attempt: int,
    wait: Wait,
    code: int,
    message: str,
    reason: str | None = None,
) -> None:
    pod = wait_pod_running(kubectl, ns, name, attempt, wait)[0]
    finish_pod(kubectl, ns, pod["metadata"]["name"], code, message, reason)


def test_running_then_succeeded(kubectl: Any, ns: str, wait_until: Wait) -> None:
    kubectl.apply(manifest("ok"), namespace=ns)
    pod = wait_pod_running(kubectl, ns, "ok", 0, wait_until)[0]
    wait_phase(kubectl, ns, "ok", "Running", wait_until)
    finish_pod(kubectl, ns, pod["metadata"]["name"], 0)
    status = wait_phase(kubectl, ns, "ok", "Succeeded", wait_until)
    assert status["output"]["adapterPath"] == "pvc://output/ok/adapter"
    assert status["attempts"][0]["result"] == "Succeeded"
    assert status["completionTime"] and status["startTime"]
    assert status["observedGeneration"] == 1
    assert {"AttemptStarted", "Running", "Succeeded"} <= set(event_reasons(kubectl, ns, "ok"))
    annotations = kubectl.json("get", "ftj", "ok", "-n", ns)["metadata"]["annotations"]
    assert "kubetune.io/last-handled-configuration" in annotations  # kopf's diff-base, not status
    assert not any(key.startswith("kopf") for key in status)


def test_oom_then_nan_then_failed_after_max_retries(
    kubectl: Any, ns: str, wait_until: Wait
) -> None:
    kubectl.apply(manifest("flaky"), namespace=ns)
    oom = termination("OutOfMemory", 4, "CUDA out of memory. Tried to allocate 2.00 GiB", step=12)
    fail_attempt(kubectl, ns, "flaky", 0, wait_until, 4, oom)
    wait_pod_running(kubectl, ns, "flaky", 1, wait_until)
    status = status_of(kubectl, ns, "flaky")
    assert status["phase"] in ("Retrying", "Running")
    first, second = status["attempts"]
    assert first["result"] == "OutOfMemory" and "CUDA out of memory" in first["message"]
    assert second["changes"] == {"microBatchSize": "4", "gradientAccumulationSteps": "4"}
    assert "microBatchSize 8 -> 4" in second["reason"]
    training = config(kubectl, ns, "flaky-a1")["training"]
    assert (training["microBatchSize"], training["gradientAccumulationSteps"]) == (4, 4)
    assert config(kubectl, ns, "flaky-a0")["training"]["microBatchSize"] == 8  # history kept

    nan = termination(
        "NaNLoss",
        5,
        "loss became nan at step 31",
        step=31,
        checkpoint="/mnt/pvc/output/flaky/checkpoints/step-000030",
    )
    fail_attempt(kubectl, ns, "flaky", 1, wait_until, 5, nan)
    wait_pod_running(kubectl, ns, "flaky", 2, wait_until)
    status = status_of(kubectl, ns, "flaky")
    assert status["attempts"][2]["changes"]["learningRate"] == "0.0001"
    assert "step-000030" in status["attempts"][2]["reason"]
    assert status["output"]["checkpointStep"] == 30
    assert config(kubectl, ns, "flaky-a2")["training"]["learningRate"] == 1e-4

    fail_attempt(kubectl, ns, "flaky", 2, wait_until, 1, "Traceback: RuntimeError: NCCL timeout")
    status = wait_phase(kubectl, ns, "flaky", "Failed", wait_until)
    assert [a["result"] for a in status["attempts"]] == ["OutOfMemory", "NaNLoss", "Error"]
    assert "retries exhausted" in status["message"]
    assert children(kubectl, ns, "flaky")["Job"] == ["flaky-a0", "flaky-a1", "flaky-a2"]
    reasons = event_reasons(kubectl, ns, "flaky")
    assert {"OutOfMemory", "NaNLoss", "Error", "Failed"} <= set(reasons)
    row = kubectl("get", "ftj", "flaky", "-n", ns, "-o", "wide", "--no-headers").stdout.split()
    assert row[1] == "Failed"


def test_kernel_oom_kill_retries_and_config_error_does_not(
    kubectl: Any, ns: str, wait_until: Wait
) -> None:
    kubectl.apply(manifest("killed"), namespace=ns)
    kubectl.apply(manifest("badcfg"), namespace=ns)
    fail_attempt(kubectl, ns, "killed", 0, wait_until, 137, "", reason="OOMKilled")
    fail_attempt(
        kubectl,
        ns,
        "badcfg",
        0,
        wait_until,
        2,
        termination("InvalidConfig", 2, "method.rank: 4096 exceeds hidden size"),
    )
    wait_pod_running(kubectl, ns, "killed", 1, wait_until)
    conditions = {c["type"]: c for c in status_of(kubectl, ns, "killed")["conditions"]}
    assert conditions["AttemptFailed"]["reason"] == "OOMKilled"
    status = wait_phase(kubectl, ns, "badcfg", "Failed", wait_until)
    assert len(status["attempts"]) == 1 and "method.rank" in status["message"]
    assert "badcfg-a1" not in children(kubectl, ns, "badcfg").get("Job", [])


def test_suspend_keeps_checkpoints_and_resume_continues(
    kubectl: Any, ns: str, wait_until: Wait
) -> None:
    kubectl.apply(manifest("pausable"), namespace=ns)
    wait_pod_running(kubectl, ns, "pausable", 0, wait_until)
    kubectl(
        "patch", "ftj", "pausable", "-n", ns, "--type=merge", "-p", '{"spec": {"suspend": true}}'
    )
    wait_phase(kubectl, ns, "pausable", "Suspended", wait_until)
    wait_until(lambda: "Job" not in children(kubectl, ns, "pausable"), what="the Job to be deleted")
    wait_until(lambda: not trainer_pods(kubectl, ns, "pausable"), what="the pod to be deleted")
    assert kubectl("get", "pvc", "output", "-n", ns, check=False).returncode == 0

    kubectl(
        "patch", "ftj", "pausable", "-n", ns, "--type=merge", "-p", '{"spec": {"suspend": false}}'
    )
    wait_pod_running(kubectl, ns, "pausable", 1, wait_until)
    status = wait_phase(kubectl, ns, "pausable", "Running", wait_until)
    assert status["attempts"][0]["result"] == "Suspended"
    assert status["attempts"][1]["reason"] == "resumed after suspend"
    args = kubectl.json("get", "job", "pausable-a1", "-n", ns)["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert "--resume" in args and args[args.index("--resume") + 1] == "auto"
    assert {"Suspended", "AttemptStarted"} <= set(event_reasons(kubectl, ns, "pausable"))


def test_image_pull_backoff_becomes_a_condition_and_an_event(
    kubectl: Any, ns: str, wait_until: Wait
) -> None:
    kubectl.apply(manifest("badimage"), namespace=ns)
    pod = wait_pod_running(kubectl, ns, "badimage", 0, wait_until)[0]
    set_waiting(
        kubectl,
        ns,
        pod["metadata"]["name"],
        "ImagePullBackOff",
        'Back-off pulling image "kubetune-trainer:e2e"',
    )

    def pull_condition() -> dict[str, Any] | None:
        conditions = {
            c["type"]: c for c in status_of(kubectl, ns, "badimage").get("conditions", [])
        }
        running = conditions.get("Running", {})
        return running if running.get("reason") == "ImagePullBackOff" else None

    condition = wait_until(pull_condition, what="a Running=False/ImagePullBackOff condition")
    assert condition["status"] == "False" and "Back-off pulling image" in condition["message"]
    assert status_of(kubectl, ns, "badimage")["phase"] == "Pending"
    assert "ImagePullBackOff" in event_reasons(kubectl, ns, "badimage")


def test_delete_cascades_to_children_but_not_the_output_volume(
    kubectl: Any, ns: str, wait_until: Wait
) -> None:
    kubectl.apply(manifest("doomed", resources={"gpusPerNode": 2, "nodes": 2}), namespace=ns)
    wait_pod_running(kubectl, ns, "doomed", 0, wait_until, count=2)
    assert set(children(kubectl, ns, "doomed")) == {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Service",
        "Job",
    }
    kubectl("delete", "ftj", "doomed", "-n", ns)
    wait_until(
        lambda: not children(kubectl, ns, "doomed"), what="garbage collection of the children"
    )
    wait_until(
        lambda: not trainer_pods(kubectl, ns, "doomed"), what="garbage collection of the pods"
    )
    assert kubectl.json("get", "pvc", "output", "-n", ns)["status"]["phase"] == "Bound"


def test_memory_preflight_warns_or_refuses(kubectl: Any, ns: str, wait_until: Wait) -> None:
    small = {"gpusPerNode": 1, "gpuMemory": "16Gi"}  # Qwen3-8B LoRA bf16 needs about 24 GiB
    kubectl.apply(manifest("tight", resources=small), namespace=ns)
    wait_pod_running(kubectl, ns, "tight", 0, wait_until)
    status = wait_phase(kubectl, ns, "tight", "Running", wait_until)
    fits = next(c for c in status["conditions"] if c["type"] == "MemoryFits")
    assert fits["status"] == "False" and fits["reason"] == "InsufficientGPUMemory"
    assert "exceeds the 16.0 GiB of spec.resources.gpuMemory" in fits["message"]
    assert "InsufficientGPUMemory" in event_reasons(kubectl, ns, "tight")

    kubectl.apply(manifest("refused", resources=small, strictPreflight=True), namespace=ns)
    status = wait_phase(kubectl, ns, "refused", "Failed", wait_until)
    assert "InsufficientGPUMemory" in status["message"] and "strictPreflight" in status["message"]
    assert children(kubectl, ns, "refused") == {}  # no pod, no Job, nothing
    assert not trainer_pods(kubectl, ns, "refused")

    kubectl.apply(
        manifest("roomy", resources={"gpusPerNode": 1, "gpuMemory": "80Gi"}), namespace=ns
    )
    status = wait_phase(kubectl, ns, "roomy", "Running", wait_until)
    fits = next(c for c in status["conditions"] if c["type"] == "MemoryFits")
    assert fits["status"] == "True" and fits["reason"] == "Fits"
