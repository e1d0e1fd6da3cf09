"""The control plane the e2e tier relies on: real scheduling, controllers, CRDs, fake GPU nodes.

These tests check the cluster, not Kubetune: that the real kube-scheduler places GPU pods on
kwok's fake GPU nodes, that the real controller-manager runs Deployments and garbage
collection, that CRD schemas, status and printer columns work, and that a pod status written
by a test (the way a kubelet would) is left alone by kwok, which the operator tests rely on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"  # never pulled: kwok nodes run no containers


def gpu_container(gpus: int) -> dict[str, Any]:
    return {"name": "main", "image": PAUSE_IMAGE, "resources": {"limits": {"nvidia.com/gpu": gpus}}}


def gpu_job(name: str, gpus: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [gpu_container(gpus)]}},
        },
    }


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    """The status condition of type ``kind``, or {} if there is none."""
    for cond in obj.get("status", {}).get("conditions", []):
        if cond["type"] == kind:
            return dict(cond)
    return {}


@pytest.fixture(scope="module")
def gpu_capacity(kubectl: Any) -> dict[str, int]:
    """GPUs per node for nodes advertising nvidia.com/gpu; skips the test if there are none."""
    nodes = kubectl.json("get", "nodes")["items"]
    capacity = {
        n["metadata"]["name"]: int(n["status"]["capacity"]["nvidia.com/gpu"])
        for n in nodes
        if "nvidia.com/gpu" in n["status"].get("capacity", {})
    }
    if not capacity:
        pytest.skip("no node advertises nvidia.com/gpu (use hack/cluster.sh or add kwok GPU nodes)")
    return capacity


def job_pod(kubectl: Any, namespace: str, job: str) -> dict[str, Any] | None:
    pods = kubectl.json("get", "pods", "-n", namespace, "-l", f"job-name={job}")["items"]
    return pods[0] if pods else None


def running_job_pod(kubectl: Any, namespace: str, job: str, wait_until: Callable[..., Any]) -> Any:
    def running() -> dict[str, Any] | None:
        pod = job_pod(kubectl, namespace, job)
        return pod if pod and pod["status"].get("phase") == "Running" else None

    return wait_until(running, what=f"a Running pod of job {job}")


def test_gpu_job_pod_is_scheduled_on_a_gpu_node_and_runs(
    kubectl: Any, namespace: str, wait_until: Callable[..., Any], gpu_capacity: dict[str, int]
) -> None:
    kubectl.apply(gpu_job("train"), namespace=namespace)

    pod = running_job_pod(kubectl, namespace, "train", wait_until)

    assert pod["spec"]["nodeName"] in gpu_capacity
    assert condition(pod, "PodScheduled").get("status") == "True"
    assert condition(pod, "Ready").get("status") == "True"


def test_pod_asking_for_more_gpus_than_any_node_has_stays_pending(
    kubectl: Any, namespace: str, wait_until: Callable[..., Any], gpu_capacity: dict[str, int]
) -> None:
    too_many = max(gpu_capacity.values()) + 1
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "greedy"},
        "spec": {"containers": [gpu_container(too_many)]},
    }
    kubectl.apply(pod, namespace=namespace)

    def unschedulable() -> dict[str, Any] | None:
        cond = condition(kubectl.json("get", "pod", "greedy", "-n", namespace), "PodScheduled")
        return cond if cond.get("status") == "False" else None

    cond = wait_until(unschedulable, what="PodScheduled=False on pod greedy")
    assert cond["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in cond["message"]
    status = kubectl.json("get", "pod", "greedy", "-n", namespace)
    assert status["status"]["phase"] == "Pending"
    assert "nodeName" not in status["spec"]


def test_deployment_gets_replicaset_and_pods_and_deleting_it_collects_them(
    kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    labels = {"app": "web"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": PAUSE_IMAGE}]},
            },
        },
    }
    kubectl.apply(deployment, namespace=namespace)

    def available() -> bool:
        status = kubectl.json("get", "deployment", "web", "-n", namespace)["status"]
        return status.get("availableReplicas") == 2

    wait_until(available, what="deployment web to have 2 available replicas")
    (replicaset,) = kubectl.json("get", "replicasets", "-n", namespace, "-l", "app=web")["items"]
    assert replicaset["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    pods = kubectl.json("get", "pods", "-n", namespace, "-l", "app=web")["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["metadata"]["ownerReferences"][0]["uid"] == replicaset["metadata"]["uid"]
        assert pod["status"]["phase"] == "Running"

    kubectl("delete", "deployment", "web", "-n", namespace)

    def collected() -> bool:
        rs = kubectl.json("get", "replicasets", "-n", namespace, "-l", "app=web")["items"]
        pods = kubectl.json("get", "pods", "-n", namespace, "-l", "app=web")["items"]
        return not rs and not pods

    wait_until(collected, what="the garbage collector to delete the ReplicaSet and its pods")


WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.e2e.kubetune.io"},
    "spec": {
        "group": "e2e.kubetune.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                ],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1, "maximum": 8}
                                },
                            },
                            "status": {
                                "type": "object",
                                "properties": {"phase": {"type": "string"}},
                            },
                        },
                    }
                },
            }
        ],
    },
}


def widget(name: str, size: int) -> dict[str, Any]:
    return {
        "apiVersion": "e2e.kubetune.io/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size},
    }


@pytest.fixture
def widget_crd(kubectl: Any, wait_until: Callable[..., Any]) -> Any:
    kubectl.apply(WIDGET_CRD)

    def established() -> bool:
        crd = kubectl.json("get", "crd", "widgets.e2e.kubetune.io")
        return condition(crd, "Established").get("status") == "True"

    wait_until(established, what="CRD widgets.e2e.kubetune.io to be established")
    yield
    kubectl("delete", "crd", "widgets.e2e.kubetune.io", "--wait=false")


@pytest.mark.usefixtures("widget_crd")
def test_crd_schema_status_subresource_and_printer_columns(kubectl: Any, namespace: str) -> None:
    kubectl.apply(widget("small", 2), namespace=namespace)

    rejected = kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(widget("huge", 9)), check=False
    )
    assert rejected.returncode != 0
    assert "spec.size" in rejected.stderr
    assert "less than or equal to 8" in rejected.stderr

    kubectl(
        "patch", "widget", "small", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"phase": "Ready"}}),
    )  # fmt: skip
    # The main resource ignores status writes once the status subresource exists.
    kubectl(
        "patch", "widget", "small", "-n", namespace, "--type=merge",
        "-p", json.dumps({"status": {"phase": "Hacked"}}),
    )  # fmt: skip
    header, row = kubectl("get", "widgets", "-n", namespace).stdout.splitlines()
    assert header.split() == ["NAME", "SIZE", "PHASE"]  # no AGE: printer columns replace it
    assert row.split() == ["small", "2", "Ready"]


def test_kubectl_get_nodes_lists_fake_gpu_nodes_with_capacity(
    kubectl: Any, gpu_capacity: dict[str, int]
) -> None:
    columns = ",".join(
        [
            "NAME:.metadata.name",
            "GPU:.status.capacity.nvidia\\.com/gpu",
            "READY:.status.conditions[?(@.type=='Ready')].status",
        ]
    )
    output = kubectl("get", "nodes", "-o", f"custom-columns={columns}").stdout
    listed = {name: (gpus, ready) for name, gpus, ready in map(str.split, output.splitlines()[1:])}

    for name, gpus in gpu_capacity.items():
        assert listed[name] == (str(gpus), "True")
    assert any(gpus == "<none>" for gpus, _ in listed.values()), "expected a CPU-only node"


@pytest.mark.parametrize(
    ("exit_code", "phase", "job_condition"),
    [(1, "Failed", "Failed"), (0, "Succeeded", "Complete")],
)
def test_pod_status_written_like_a_kubelet_is_kept_and_drives_the_job(
    kubectl: Any,
    namespace: str,
    wait_until: Callable[..., Any],
    gpu_capacity: dict[str, int],
    exit_code: int,
    phase: str,
    job_condition: str,
) -> None:
    kubectl.apply(gpu_job("train"), namespace=namespace)
    pod = running_job_pod(kubectl, namespace, "train", wait_until)
    name = pod["metadata"]["name"]
    time.sleep(2)  # kwok must not complete the Job pod on its own (no pod-complete stage)
    assert kubectl.json("get", "pod", name, "-n", namespace)["status"]["phase"] == "Running"

    started = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    terminated = {
        "exitCode": exit_code,
        "reason": "Error" if exit_code else "Completed",
        "message": f"trainer exited {exit_code}",
        "startedAt": started,
        "finishedAt": started,
    }
    status = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
        "containerStatuses": [
            {
                "name": "main",
                "image": PAUSE_IMAGE,
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": terminated},
            }
        ],
    }
    kubectl(
        "patch", "pod", name, "-n", namespace, "--subresource=status", "--type=strategic",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip

    def job_finished() -> dict[str, Any] | None:
        job = kubectl.json("get", "job", "train", "-n", namespace)
        return job if condition(job, job_condition).get("status") == "True" else None

    job = wait_until(job_finished, what=f"job train to be {job_condition}")
    assert job["status"].get("failed" if exit_code else "succeeded") == 1
    time.sleep(2)  # give kwok the chance to (wrongly) rewrite the pod
    after = kubectl.json("get", "pod", name, "-n", namespace)["status"]
    assert after["phase"] == phase
    assert after["containerStatuses"][0]["state"]["terminated"]["exitCode"] == exit_code
    assert after["containerStatuses"][0]["state"]["terminated"]["message"] == terminated["message"]
