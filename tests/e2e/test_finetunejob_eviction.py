"""A trainer pod evicted through the real Eviction API (what `kubectl drain` and the node-pressure
paths use) is a disruption: the API server adds the pod's `DisruptionTarget` condition, the Job's
podFailurePolicy fails the attempt by its rule, and the operator starts the next attempt with no
retry spent (`retry.maxRetries: 0` would otherwise end the job Failed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client, config
from operator_helpers import (
    OperatorProcess,
    create_pvcs,
    delete_pvs,
    finish_pod,
    operator,  # noqa: F401  (module fixture)
    status_of,
    wait_phase,
    wait_pod_running,
)
from test_finetunejob_restart import manifest as restart_manifest

pytestmark = pytest.mark.e2e
Wait = Callable[..., Any]


def manifest(name: str) -> dict[str, Any]:
    """test_finetunejob_restart's one-GPU job, with no retries to spend."""
    body = restart_manifest(name)
    body["spec"] = {**body["spec"], "retry": {"maxRetries": 0}}
    return body


def evict(cluster: Any, namespace: str, pod: str) -> None:
    """POST pods/eviction, as `kubectl drain` does."""
    api = client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod, namespace=namespace))
    api.create_namespaced_pod_eviction(pod, namespace, body)


def test_eviction_is_a_disruption_not_a_spent_retry(
    cluster: Any,
    kubectl: Any,
    namespace: str,
    operator: OperatorProcess,  # noqa: F811
    wait_until: Wait,
) -> None:
    ns = namespace
    create_pvcs(kubectl, ns, {"data", "output"})
    try:
        kubectl.apply(manifest("evicted"), namespace=ns)
        pod = wait_pod_running(kubectl, ns, "evicted", 0, wait_until)[0]
        evict(cluster, ns, pod["metadata"]["name"])

        def next_attempt() -> dict[str, Any] | None:
            status = status_of(kubectl, ns, "evicted")
            attempts = status.get("attempts") or []
            return status if len(attempts) > 1 and attempts[0].get("result") else None

        status = wait_until(next_attempt, timeout=90, what="attempt 1 after the eviction")
        assert status["phase"] in ("Retrying", "Running"), status
        first = status["attempts"][0]
        assert first["result"] == "Preempted", first

        def job_failed() -> dict[str, Any] | None:  # the operator may act on the pod first
            job = kubectl.json("get", "job", "evicted-a0", "-n", ns)
            conditions = job["status"].get("conditions") or []
            return next((c for c in conditions if c["type"] == "Failed"), None)

        failed = wait_until(job_failed, what="Job evicted-a0 Failed")
        assert failed["reason"] == "PodFailurePolicy", failed
        assert "has condition DisruptionTarget matching FailJob rule" in failed["message"], failed
        # The message is the pod's DisruptionTarget condition when the operator saw the pod,
        # else the Job's PodFailurePolicy condition (a loaded machine may delete the pod first).
        assert "Evict" in first["message"] or "DisruptionTarget" in first["message"], first

        second = wait_pod_running(kubectl, ns, "evicted", 1, wait_until)[0]
        finish_pod(kubectl, ns, second["metadata"]["name"], 0)
        status = wait_phase(kubectl, ns, "evicted", "Succeeded", wait_until)
        assert [a["result"] for a in status["attempts"]] == ["Preempted", "Succeeded"]
    finally:
        kubectl("delete", "finetunejobs", "--all", "-n", ns, "--wait=false")
        delete_pvs(kubectl, ns)
