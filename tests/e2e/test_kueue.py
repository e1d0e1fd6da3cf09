"""FineTuneJobs behind a real Kueue (hack/cluster.sh with KUBETUNE_KUEUE=1; skipped without it).

Each test gets its own ClusterQueue with 8 GPUs of quota and a LocalQueue `team-a` in its
namespace, made from manifests/examples/kueue-queues.yaml; the FineTuneJobs come from
manifests/examples/finetunejob-queued.yaml. kwok's nodes hold 2 x 8 GPUs, so only Kueue's quota
keeps a Job waiting:
- two 8-GPU jobs: one runs, the other waits with Kueue's reason in its status (and `kubectl get
  ftj`); when the first finishes the second is admitted and runs;
- a 2-node x 8-GPU job does not fit the quota as a whole: not one pod is created;
- a higher-priority job preempts a running lower one (Kueue evicts its Workload): the lower one
  records a disruption (no retry spent), queues again, and once the higher one finishes is
  re-admitted and resumes from its checkpoint (`--resume auto`, the same output folder).
Pods are driven like a kubelet would (`finish_pod`), as in the other FineTuneJob e2e tests.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from operator_helpers import (
    EXAMPLES,
    OperatorProcess,
    claims_of,
    create_pvcs,
    delete_pvs,
    event_reasons,
    finish_pod,
    load_example,
    operator,  # noqa: F401  (module fixture)
    printed_row,
    status_of,
    trainer_pods,
    wait_phase,
    wait_pod_running,
)

pytestmark = pytest.mark.e2e
Wait = Callable[..., Any]
QUEUES = EXAMPLES / "kueue-queues.yaml"


@pytest.fixture
def queues(kubectl: Any, namespace: str) -> Iterator[str]:
    """The shipped queue objects, with a ClusterQueue of this test's own; its name."""
    if kubectl("get", "crd", "workloads.kueue.x-k8s.io", check=False).returncode != 0:
        pytest.skip("no Kueue in this cluster: run with KUBETUNE_KUEUE=1 (hack/cluster.sh)")
    cluster_queue = f"cq-{namespace}"[:63]
    docs = []
    for doc in yaml.safe_load_all(QUEUES.read_text()):
        doc = copy.deepcopy(doc)
        if doc["kind"] == "ClusterQueue":
            doc["metadata"]["name"] = cluster_queue
            selector = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            doc["spec"]["namespaceSelector"] = selector
        if doc["kind"] == "LocalQueue":
            doc["metadata"]["namespace"] = namespace
            doc["spec"]["clusterQueue"] = cluster_queue
        docs.append(doc)
    kubectl.apply(*docs)
    yield cluster_queue
    kubectl("delete", "clusterqueue", cluster_queue, "--wait=false", check=False)


def queued_job(name: str, priority: str = "kubetune-batch", nodes: int = 1) -> dict[str, Any]:
    manifest = load_example("queued")
    manifest["metadata"]["name"] = name
    manifest["spec"]["scheduling"]["priorityClassName"] = priority
    manifest["spec"]["resources"]["nodes"] = nodes
    return manifest


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def wait_queued(kubectl: Any, ns: str, name: str, wait_until: Wait) -> dict[str, Any]:
    """Wait until the status carries Kueue's own reason (not only ours: no Workload yet)."""

    def queued() -> dict[str, Any] | None:
        status = status_of(kubectl, ns, name)
        cond = condition(status, "Queued")
        ok = cond.get("status") == "True" and cond.get("reason") != "WaitingForWorkload"
        return status if ok else None

    return dict(wait_until(queued, timeout=90, what=f"{name} queued with Kueue's reason"))


def workload_of(kubectl: Any, ns: str, job: str) -> dict[str, Any]:
    for wl in kubectl.json("get", "workloads.kueue.x-k8s.io", "-n", ns)["items"]:
        if any(r.get("name") == job for r in wl["metadata"].get("ownerReferences", [])):
            return dict(wl)
    return {}


def start(kubectl: Any, ns: str, *manifests: dict[str, Any]) -> None:
    create_pvcs(kubectl, ns, set().union(*(claims_of(m) for m in manifests)))
    for manifest in manifests:
        kubectl.apply(manifest, namespace=ns)


def finish(kubectl: Any, ns: str, name: str, attempt: int, wait_until: Wait) -> None:
    for pod in trainer_pods(kubectl, ns, name, attempt):
        finish_pod(kubectl, ns, pod["metadata"]["name"], 0)
    wait_phase(kubectl, ns, name, "Succeeded", wait_until)


def test_the_second_8_gpu_job_waits_with_kueues_reason_then_runs(
    kubectl: Any,
    namespace: str,
    queues: str,
    operator: OperatorProcess,  # noqa: F811
    wait_until: Wait,
) -> None:
    ns, first, second = namespace, queued_job("first"), queued_job("second")
    try:
        start(kubectl, ns, first)
        pod = wait_pod_running(kubectl, ns, "first", 0, wait_until, timeout=90)[0]
        assert pod["spec"]["priorityClassName"] == "kubetune-batch"
        assert pod["metadata"]["labels"]["team"] == "nlp"
        assert pod["metadata"]["annotations"]["example.com/cost-center"] == "4711"
        job = kubectl.json("get", "job", "first-a0", "-n", ns)
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        wait_phase(kubectl, ns, "first", "Running", wait_until)

        start(kubectl, ns, second)
        status = wait_queued(kubectl, ns, "second", wait_until)
        assert status["phase"] == "Pending"
        cond = condition(status, "Queued")
        kueue = condition(workload_of(kubectl, ns, "second-a0").get("status", {}), "QuotaReserved")
        assert cond["reason"] == kueue["reason"] and cond["message"] == kueue["message"]
        assert (
            "insufficient unused quota" in cond["message"] and "nvidia.com/gpu" in cond["message"]
        )
        assert cond["lastTransitionTime"] in status["message"]  # since when it waits
        assert kubectl.json("get", "job", "second-a0", "-n", ns)["spec"]["suspend"] is True
        assert not trainer_pods(kubectl, ns, "second")
        row = printed_row(kubectl, ns, "second", wide=True)
        assert (row["PHASE"], row["QUEUED"], row["QUEUE"]) == ("Pending", cond["reason"], "team-a")
        assert "insufficient unused quota" in row["MESSAGE"]
        assert "Queued" in event_reasons(kubectl, ns, "second")

        finish(kubectl, ns, "first", 0, wait_until)
        assert "Admitted" in event_reasons(kubectl, ns, "first")
        wait_pod_running(kubectl, ns, "second", 0, wait_until, timeout=90)
        running = wait_phase(kubectl, ns, "second", "Running", wait_until)
        assert condition(running, "Queued")["status"] == "False"
        assert condition(running, "Queued")["reason"] == "Admitted"
        assert printed_row(kubectl, ns, "second")["QUEUED"] == "Admitted"
        wait_until(
            lambda: "Admitted" in event_reasons(kubectl, ns, "second"), what="Admitted event"
        )
        finish(kubectl, ns, "second", 0, wait_until)
    finally:
        delete_pvs(kubectl, ns)


def test_a_2_node_job_that_does_not_fit_is_not_started_at_all(
    kubectl: Any,
    namespace: str,
    queues: str,
    operator: OperatorProcess,  # noqa: F811
    wait_until: Wait,
) -> None:
    ns = namespace
    try:
        start(kubectl, ns, queued_job("gang", nodes=2))
        status = wait_queued(kubectl, ns, "gang", wait_until)
        message = condition(status, "Queued")["message"]
        assert "nvidia.com/gpu" in message and "16" in message, message  # the pod set as a whole
        workload = workload_of(kubectl, ns, "gang-a0")
        assert [p["count"] for p in workload["spec"]["podSets"]] == [2]  # one workload, 2 pods
        time.sleep(5)  # the scheduler could place both pods (2 nodes x 8 GPUs): Kueue must not
        assert not trainer_pods(kubectl, ns, "gang")
        assert kubectl.json("get", "job", "gang-a0", "-n", ns)["spec"]["suspend"] is True
        assert status_of(kubectl, ns, "gang")["phase"] == "Pending"
    finally:
        delete_pvs(kubectl, ns)


def test_a_higher_priority_job_preempts_a_lower_one_which_resumes_later(
    kubectl: Any,
    namespace: str,
    queues: str,
    operator: OperatorProcess,  # noqa: F811
    wait_until: Wait,
) -> None:
    ns = namespace
    try:
        start(kubectl, ns, queued_job("low"))
        wait_pod_running(kubectl, ns, "low", 0, wait_until, timeout=90)
        wait_phase(kubectl, ns, "low", "Running", wait_until)

        start(kubectl, ns, queued_job("urgent", priority="kubetune-urgent"))
        retrying = wait_phase(kubectl, ns, "low", "Retrying", wait_until, timeout=90)
        ended, nxt = retrying["attempts"]
        assert ended["result"] == "Preempted" and "Kueue evicted" in ended["message"]
        assert "disruption 1 of 10" in nxt["reason"]  # a disruption: no retry spent
        wait_until(
            lambda: not kubectl("get", "job", "low-a0", "-n", ns, check=False).stdout,
            what="the evicted Job deleted (Kueue would admit it again)",
        )
        wait_pod_running(kubectl, ns, "urgent", 0, wait_until, timeout=90)
        wait_queued(kubectl, ns, "low", wait_until)
        assert not trainer_pods(kubectl, ns, "low", 1)
        assert "Preempted" in event_reasons(kubectl, ns, "low")

        finish(kubectl, ns, "urgent", 0, wait_until)
        wait_pod_running(kubectl, ns, "low", 1, wait_until, timeout=90)
        wait_until(
            lambda: "Readmitted" in event_reasons(kubectl, ns, "low"), what="Readmitted event"
        )
        args = kubectl.json("get", "job", "low-a1", "-n", ns)["spec"]["template"]["spec"]
        assert args["containers"][0]["args"][-3:-1] == ["--resume", "auto"]
        first = yaml.safe_load(
            kubectl.json("get", "configmap", "low-a0", "-n", ns)["data"]["config.yaml"]
        )
        again = yaml.safe_load(
            kubectl.json("get", "configmap", "low-a1", "-n", ns)["data"]["config.yaml"]
        )
        assert again == first  # unchanged: the same output folder, so its checkpoints resume
        finish(kubectl, ns, "low", 1, wait_until)
    finally:
        delete_pvs(kubectl, ns)
