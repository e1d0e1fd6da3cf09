"""The reconcile plan, step by step: start, run, retry with changes, succeed, fail, suspend."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from kubetune_operator import names
from kubetune_operator.finetune.observe import job_snapshot, pod_snapshot
from kubetune_operator.finetune.plan import Observed, Plan, plan_reconcile
from kubetune_operator.settings import Settings
from kubetune_operator.status import status_patch

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SPEC: dict[str, Any] = {
    "model": {"name": "Qwen/Qwen3-8B"},
    "dataset": {"train": {"pvc": {"claimName": "data", "path": "train.jsonl"}}},
    "training": {"microBatchSize": 4, "learningRate": 3e-4},
    "resources": {"gpusPerNode": 1},
    "output": {"pvc": {"claimName": "out", "path": "faq"}},
    "retry": {"maxRetries": 2},
}


def body(
    spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "faq", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": spec or SPEC,
        "status": status or {},
    }


def advance(b: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """Apply the plan's status the way the API server would (merge patch of the owned keys)."""
    status = dict(b["status"])
    for key, value in status_patch(b["status"], plan.status).items():
        if value is None:
            status.pop(key, None)
        else:
            status[key] = value
    return {**b, "status": status}


def job(attempt: int, *conditions: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": f"faq-a{attempt}", "labels": {names.LABEL_ATTEMPT: str(attempt)}}
    return job_snapshot({"metadata": meta, "status": {"conditions": list(conditions)}})


def pod(
    attempt: int, phase: str, state: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    meta = {"name": f"faq-a{attempt}-x", "labels": {names.LABEL_ATTEMPT: str(attempt)}}
    containers = [{"name": "trainer", "state": state}] if state else []
    status = {"phase": phase, "containerStatuses": containers, **extra}
    return pod_snapshot({"metadata": meta, "spec": {"nodeName": "kwok-gpu-0"}, "status": status})


def failed(attempt: int, code: int, reason: str = "", **fields: Any) -> dict[str, Any]:
    message = (
        json.dumps({"reason": reason, "message": "boom", "exitCode": code, **fields})
        if reason
        else ""
    )
    return pod(
        attempt, "Failed", {"terminated": {"exitCode": code, "reason": "Error", "message": message}}
    )


def plan(
    b: dict[str, Any],
    jobs: list[Any] = (),
    pods: list[Any] = (),
    now: datetime = NOW,
    full: bool = False,
) -> Plan:  # type: ignore[assignment]
    return plan_reconcile(b, Observed(list(jobs), list(pods)), Settings(), now, full=full)


def config_of(p: Plan) -> dict[str, Any]:
    cm = next(o for o in p.apply if o["kind"] == "ConfigMap")
    return yaml.safe_load(cm["data"]["config.yaml"])


def test_first_reconcile_starts_attempt_zero() -> None:
    p = plan(body())
    assert [o["kind"] for o in p.apply] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Job",
    ]
    assert p.status.phase == "Pending"
    assert [a.job_name for a in p.status.attempts or []] == ["faq-a0"]
    assert p.status.start_time == "2026-01-02T03:04:05Z"
    assert p.status.observed_generation == 1
    assert [e.reason for e in p.events] == ["AttemptStarted"]


def test_same_state_same_plan_and_no_patch() -> None:
    b = advance(body(), plan(body()))
    running = [pod(0, "Running", {"running": {}})]
    first = plan(b, [job(0)], running)
    b = advance(b, first)
    again = plan(b, [job(0)], running, now=NOW + timedelta(seconds=30))
    assert status_patch(b["status"], again.status) == {}
    assert again.apply == [] and again.events == []


def test_restart_reapplies_everything_but_the_existing_job() -> None:
    b = advance(body(), plan(body()))
    p = plan(b, [job(0)], [], full=True)
    assert [o["kind"] for o in p.apply] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap"]
    assert p.status.attempts == plan(body()).status.attempts


def test_running_then_succeeded() -> None:
    b = advance(body(), plan(body()))
    p = plan(b, [job(0)], [pod(0, "Running", {"running": {}})])
    assert p.status.phase == "Running"
    assert [e.reason for e in p.events] == ["Running"]
    b = advance(b, p)
    b["status"]["progress"] = {"step": 90, "totalSteps": 90}
    p = plan(b, [job(0, {"type": "Complete", "status": "True"})], [])
    assert p.status.phase == "Succeeded"
    assert p.status.output is not None
    assert p.status.output.adapter_path == "pvc://out/faq/adapter"
    assert p.status.output.checkpoint_step == 90
    assert p.status.completion_time == "2026-01-02T03:04:05Z"
    b = advance(b, p)
    assert b["status"]["progress"] == {"step": 90, "totalSteps": 90}  # the trainer's keys survive
    assert plan(b, [], []).apply == []


def test_oom_retries_with_a_smaller_micro_batch_then_nan_with_a_lower_lr() -> None:
    b = advance(body(), plan(body()))
    p = plan(b, [job(0)], [failed(0, 4, "OutOfMemory", step=7)])
    assert p.status.phase == "Retrying"
    attempts = p.status.attempts or []
    assert [a.result for a in attempts] == ["OutOfMemory", None]
    assert attempts[1].job_name == "faq-a1"
    assert attempts[1].changes == {"microBatchSize": "2", "gradientAccumulationSteps": "2"}
    assert "microBatchSize 4 -> 2" in (attempts[1].reason or "")
    assert config_of(p)["training"]["microBatchSize"] == 2
    assert [o["metadata"]["name"] for o in p.apply if o["kind"] == "Job"] == ["faq-a1"]
    assert {"OutOfMemory", "AttemptStarted"} == {e.reason for e in p.events}
    b = advance(b, p)
    p = plan(
        b, [job(0), job(1)], [failed(1, 5, "NaNLoss", checkpoint="/x/checkpoints/step-000020")]
    )
    assert config_of(p)["training"]["learningRate"] == 1e-4
    assert config_of(p)["training"]["microBatchSize"] == 2
    assert p.status.output is not None and p.status.output.checkpoint_step == 20


def test_failed_after_max_retries() -> None:
    b = advance(body(), plan(body()))
    for attempt in range(3):
        p = plan(b, [job(i) for i in range(attempt + 1)], [failed(attempt, 1)])
        b = advance(b, p)
    assert b["status"]["phase"] == "Failed"
    assert len(b["status"]["attempts"]) == 3
    assert "retries exhausted" in b["status"]["message"]
    failed_condition = next(c for c in b["status"]["conditions"] if c["type"] == "Failed")
    assert failed_condition["status"] == "True" and failed_condition["reason"] == "Error"


def test_config_error_fails_at_once() -> None:
    b = advance(body(), plan(body()))
    p = plan(b, [job(0)], [failed(0, 2, "InvalidConfig")])
    assert p.status.phase == "Failed" and p.apply == []


def test_kernel_oom_kill_is_a_condition_reason() -> None:
    b = advance(body(), plan(body()))
    oom = pod(0, "Failed", {"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    p = plan(b, [job(0)], [oom])
    cond = next(c for c in p.status.conditions or [] if c.type == "AttemptFailed")
    assert cond.reason == "OOMKilled"


def test_invalid_spec_fails_with_the_field_path_once() -> None:
    bad = {**SPEC, "output": {"path": "/tmp/out"}}
    p = plan(body(bad))
    assert p.status.phase == "Failed" and p.apply == []
    assert "spec.output.path" in (p.status.message or "")
    cond = (p.status.conditions or [])[0]
    assert (cond.type, cond.reason) == ("Failed", "InvalidSpec")
    assert [e.reason for e in p.events] == ["InvalidSpec"]
    again = plan(advance(body(bad), p))
    assert again.events == [] and status_patch(advance(body(bad), p)["status"], again.status) == {}


def test_pydantic_errors_name_the_field() -> None:
    bad = {**SPEC, "dataset": {"train": {"pvc": {"claimName": "d"}, "uri": "s3://x"}}}
    p = plan(body(bad))
    assert "spec.dataset.train" in (p.status.message or "")


def test_pending_timeout_fails_with_the_scheduler_reason() -> None:
    spec = {**SPEC, "pendingTimeoutSeconds": 60}
    b = advance(body(spec), plan(body(spec)))
    cond = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "Insufficient nvidia.com/gpu",
    }
    pending = [pod(0, "Pending", conditions=[cond])]
    early = plan(b, [job(0)], pending, now=NOW + timedelta(seconds=30))
    assert early.status.phase == "Pending" and early.requeue_after == 30
    assert any(e.reason == "Unschedulable" for e in early.events)
    late = plan(advance(b, early), [job(0)], pending, now=NOW + timedelta(seconds=61))
    assert late.status.phase == "Failed"
    assert late.delete_jobs == ["faq-a0"]
    assert "Insufficient nvidia.com/gpu" in (late.status.message or "")
    failed_condition = next(c for c in late.status.conditions or [] if c.type == "Failed")
    assert failed_condition.reason == "Unschedulable"


def test_suspend_deletes_the_job_and_resume_starts_a_new_attempt() -> None:
    b = advance(body(), plan(body()))
    suspended = {**SPEC, "suspend": True}
    p = plan({**b, "spec": suspended}, [job(0)], [pod(0, "Running", {"running": {}})])
    assert p.status.phase == "Suspended" and p.delete_jobs == ["faq-a0"]
    b = advance({**b, "spec": suspended}, p)
    assert plan(b, [], []).delete_jobs == []
    p = plan({**b, "spec": SPEC}, [], [])
    assert p.status.phase == "Pending"
    attempts = p.status.attempts or []
    assert [a.result for a in attempts] == ["Suspended", None]
    assert attempts[1].job_name == "faq-a1" and attempts[1].reason == "resumed after suspend"
    b = advance({**b, "spec": SPEC}, p)
    p = plan(b, [job(1)], [pod(1, "Running", {"running": {}})])
    assert p.status.phase == "Running"  # a resumed attempt is not a retry


def test_suspended_before_start_creates_nothing() -> None:
    p = plan(body({**SPEC, "suspend": True}))
    assert p.status.phase == "Suspended" and p.apply == []
