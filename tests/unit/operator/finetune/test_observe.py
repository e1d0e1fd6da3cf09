"""Reading an attempt's state from its Job and pods, as the kubelet and controllers report it."""

from __future__ import annotations

import json
from typing import Any

from kubetune_api.termination import TerminationReason
from kubetune_operator import names
from kubetune_operator.finetune.observe import job_snapshot, observe_attempt, pod_snapshot


def job(conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body = {
        "metadata": {"name": "faq-a0", "labels": {names.LABEL_ATTEMPT: "0"}},
        "status": {"conditions": conditions or []},
    }
    return job_snapshot(body)


def pod(
    phase: str = "Pending",
    node: str | None = None,
    conditions: list[dict[str, Any]] | None = None,
    state: dict[str, Any] | None = None,
    **status: Any,
) -> dict[str, Any]:
    containers = [{"name": "trainer", "state": state}] if state else []
    body = {
        "metadata": {"name": "faq-a0-x", "labels": {names.LABEL_ATTEMPT: "0"}},
        "spec": {"nodeName": node} if node else {},
        "status": {
            "phase": phase,
            "conditions": conditions or [],
            "containerStatuses": containers,
            **status,
        },
    }
    return pod_snapshot(body)


def terminated(code: int, message: str = "", reason: str = "Error") -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": reason, "message": message}}


UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
}


def test_no_job_yet_is_missing() -> None:
    assert observe_attempt(None, [], 1).state == "Missing"


def test_unschedulable_pod_reports_the_scheduler_message() -> None:
    obs = observe_attempt(job(), [pod(conditions=[UNSCHEDULABLE])], 1)
    assert (obs.state, obs.reason, obs.scheduled) == ("Pending", "Unschedulable", False)
    assert "Insufficient nvidia.com/gpu" in obs.message


def test_image_pull_backoff_is_pending_with_its_reason() -> None:
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "x"'}}
    obs = observe_attempt(job(), [pod(node="n1", state=waiting)], 1)
    assert (obs.state, obs.reason, obs.scheduled) == ("Pending", "ImagePullBackOff", True)


def test_running_needs_every_node() -> None:
    running = pod("Running", node="n1", state={"running": {}})
    assert observe_attempt(job(), [running], 1).state == "Running"
    assert observe_attempt(job(), [running], 2).state == "Pending"


def test_termination_message_gives_reason_step_and_checkpoint() -> None:
    message = json.dumps(
        {"reason": "OutOfMemory", "message": "CUDA out of memory", "exitCode": 4, "step": 12,
         "checkpoint": "/mnt/pvc/out/faq/checkpoints/step-000010"}
    )  # fmt: skip
    obs = observe_attempt(job(), [pod("Failed", node="n1", state=terminated(4, message))], 1)
    assert obs.state == "Failed" and obs.failure is not None
    assert obs.failure.reason == "OutOfMemory"
    assert obs.failure.message == "CUDA out of memory"
    assert obs.failure.step == 12
    assert obs.failure.checkpoint.endswith("step-000010")  # type: ignore[union-attr]


def test_kernel_oom_kill_wins_over_anything_else() -> None:
    obs = observe_attempt(
        job(), [pod("Failed", node="n1", state=terminated(137, "", "OOMKilled"))], 1
    )
    assert obs.failure is not None and obs.failure.reason == "OOMKilled"


def test_exit_code_alone_maps_to_a_reason() -> None:
    logs = "Traceback ...\nFloatingPointError: loss is nan"
    obs = observe_attempt(job(), [pod("Failed", node="n1", state=terminated(5, logs))], 1)
    assert obs.failure is not None and obs.failure.reason == "NaNLoss"
    assert "FloatingPointError" in obs.failure.message
    obs = observe_attempt(job(), [pod("Failed", node="n1", state=terminated(2))], 1)
    assert obs.failure is not None and obs.failure.reason == "InvalidConfig"
    obs = observe_attempt(job(), [pod("Failed", node="n1", state=terminated(1))], 1)
    assert obs.failure is not None and obs.failure.reason == "Error"
    assert "exited with code 1" in obs.failure.message


def test_deadline_exceeded_comes_from_the_job() -> None:
    failed = [
        {
            "type": "Failed",
            "status": "True",
            "reason": "DeadlineExceeded",
            "message": "Job was active longer than specified deadline",
        }
    ]
    obs = observe_attempt(job(failed), [], 1)
    assert obs.state == "Failed" and obs.failure is not None
    assert obs.failure.reason == "DeadlineExceeded"


def test_evicted_pod_without_container_state() -> None:
    obs = observe_attempt(
        job(), [pod("Failed", reason="Evicted", message="node was low on memory")], 1
    )
    assert obs.failure is not None and obs.failure.reason == "Evicted"


def test_success_from_job_condition_or_all_pods() -> None:
    assert (
        observe_attempt(job([{"type": "Complete", "status": "True"}]), [], 1).state == "Succeeded"
    )
    done = pod("Succeeded", node="n1", state=terminated(0, "", "Completed"))
    assert observe_attempt(job(), [done], 1).state == "Succeeded"
    assert observe_attempt(job(), [done], 2).state != "Succeeded"


def test_multi_node_prefers_the_specific_reason() -> None:
    nan = json.dumps({"reason": "NaNLoss", "message": "loss became nan", "exitCode": 5})
    pods = [
        pod("Failed", node="n1", state=terminated(1, "peer died")),
        pod("Failed", node="n2", state=terminated(5, nan)),
    ]
    obs = observe_attempt(job(), pods, 2)
    assert obs.failure is not None and obs.failure.reason == "NaNLoss"


def test_parse_termination_ignores_foreign_messages() -> None:
    assert TerminationReason.parse("plain log text") is None
    assert TerminationReason.parse('["not", "ours"]') is None
    assert TerminationReason.parse('{"reason": "NaNLoss"}') == TerminationReason("NaNLoss")
