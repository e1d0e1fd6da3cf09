"""SIGKILL the operator while jobs run and change: after a restart nothing is duplicated and every
FineTuneJob's status converges (children are named per attempt and applied server-side).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from operator_helpers import (
    OperatorProcess,
    children,
    create_pvcs,
    delete_pvs,
    finish_pod,
    operator,  # noqa: F401  (module fixture)
    status_of,
    termination,
    trainer_pods,
    wait_phase,
    wait_pod_running,
)

pytestmark = pytest.mark.e2e
Wait = Callable[..., Any]
KINDS = ("serviceaccount", "role", "rolebinding", "configmap", "job")


def manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "Qwen/Qwen3-0.6B"},
            "dataset": {"train": {"pvc": {"claimName": "data", "path": "train.jsonl"}}},
            "training": {"microBatchSize": 4},
            "resources": {"gpusPerNode": 1},
            "output": {"pvc": {"claimName": "output"}},
        },
    }


def uids(kubectl: Any, ns: str) -> dict[tuple[str, str], str]:
    listed = kubectl.json("get", ",".join(KINDS), "-n", ns, "-l", "kubetune.io/finetunejob")
    return {(i["kind"], i["metadata"]["name"]): i["metadata"]["uid"] for i in listed["items"]}


def expected_children(name: str, attempts: int) -> dict[str, list[str]]:
    per_attempt = sorted(f"{name}-a{i}" for i in range(attempts))
    account = [f"{name}-trainer"]
    return {
        "ServiceAccount": account,
        "Role": account,
        "RoleBinding": account,
        "ConfigMap": per_attempt,
        "Job": per_attempt,
    }


def test_sigkill_and_restart_converges_without_duplicates(
    kubectl: Any,
    namespace: str,
    operator: OperatorProcess,  # noqa: F811
    wait_until: Wait,
) -> None:
    ns = namespace
    create_pvcs(kubectl, ns, {"data", "output"})
    try:
        for name in ("done", "oom", "pause", "steady"):
            kubectl.apply(manifest(name), namespace=ns)
        for name in ("done", "oom", "pause", "steady"):
            wait_phase(kubectl, ns, name, "Running", wait_until)
        before = uids(kubectl, ns)
        steady_status = status_of(kubectl, ns, "steady")

        operator.kill()
        finish_pod(kubectl, ns, trainer_pods(kubectl, ns, "done")[0]["metadata"]["name"], 0)
        oom = termination("OutOfMemory", 4, "CUDA out of memory", step=3)
        finish_pod(kubectl, ns, trainer_pods(kubectl, ns, "oom")[0]["metadata"]["name"], 4, oom)
        kubectl(
            "patch", "ftj", "pause", "-n", ns, "--type=merge", "-p", '{"spec": {"suspend": true}}'
        )
        kubectl.apply(manifest("late"), namespace=ns)  # created while no operator runs
        time.sleep(1)
        operator.start()

        wait_phase(kubectl, ns, "done", "Succeeded", wait_until)
        wait_pod_running(kubectl, ns, "oom", 1, wait_until)
        wait_phase(kubectl, ns, "oom", "Running", wait_until)
        wait_phase(kubectl, ns, "pause", "Suspended", wait_until)
        wait_phase(kubectl, ns, "late", "Running", wait_until)

        # A second kill right after a create, mid-reconcile.
        kubectl.apply(manifest("racy"), namespace=ns)
        time.sleep(0.3)
        operator.kill()
        operator.start()
        wait_phase(kubectl, ns, "racy", "Running", wait_until)

        assert children(kubectl, ns, "done") == expected_children("done", 1)
        assert children(kubectl, ns, "oom") == expected_children("oom", 2)
        assert children(kubectl, ns, "steady") == expected_children("steady", 1)
        assert children(kubectl, ns, "late") == expected_children("late", 1)
        assert children(kubectl, ns, "racy") == expected_children("racy", 1)
        pause = expected_children("pause", 1)
        del pause["Job"]
        wait_until(lambda: children(kubectl, ns, "pause") == pause, what="the suspended Job to go")

        after = uids(kubectl, ns)
        kept = {key: uid for key, uid in before.items() if key in after}
        assert kept == {key: after[key] for key in kept}, "children were recreated"
        assert len(trainer_pods(kubectl, ns, "steady")) == 1
        steady = status_of(kubectl, ns, "steady")
        assert steady["attempts"] == steady_status["attempts"]
        assert steady["phase"] == "Running"
        assert [a.get("result") for a in status_of(kubectl, ns, "oom")["attempts"]] == [
            "OutOfMemory",
            None,
        ]
        assert operator.healthy()
    finally:
        kubectl("delete", "finetunejobs", "--all", "-n", ns, "--wait=false")
        delete_pvs(kubectl, ns)
