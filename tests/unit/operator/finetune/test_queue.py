"""Kueue: queued Jobs are built suspended with the queue label, the Workload's reason becomes the
Queued condition, admission and re-admission are Events, and an eviction is a disruption."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_api.errors import ConfigError
from kubetune_api.termination import PREEMPTED
from kubetune_operator import names
from kubetune_operator.finetune.observe import job_snapshot, pod_snapshot
from kubetune_operator.finetune.plan import Observed, Plan, plan_reconcile
from kubetune_operator.finetune.plan_types import Indexes
from kubetune_operator.finetune.queue import workload_snapshot
from kubetune_operator.finetune.validation import parse_spec
from kubetune_operator.settings import Settings

from .test_plan import NOW, SPEC, advance, body

QUEUED_SPEC: dict[str, Any] = {
    **SPEC,
    "resources": {"gpusPerNode": 8},
    "scheduling": {
        "queueName": "team-a",
        "priorityClassName": "high",
        "labels": {"team": "nlp"},
        "annotations": {"cost-center": "42"},
    },
}
PENDING = {
    "type": "QuotaReserved",
    "status": "False",
    "reason": "Pending",
    "message": "couldn't assign flavors to pod set main: insufficient unused quota for "
    "nvidia.com/gpu in flavor default, 8 more needed",
}
ADMITTED = [
    {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved"},
    {"type": "Admitted", "status": "True", "reason": "Admitted"},
]
EVICTED = {
    "type": "Evicted",
    "status": "True",
    "reason": "Preempted",
    "message": "Preempted to accommodate a workload (UID: x) due to prioritization",
}


def job(attempt: int, suspended: bool, queue: str | None = "team-a") -> dict[str, Any]:
    labels = {
        names.LABEL_ATTEMPT: str(attempt),
        **({"kueue.x-k8s.io/queue-name": queue} if queue else {}),
    }
    meta = {"name": f"faq-a{attempt}", "labels": labels}
    return job_snapshot({"metadata": meta, "spec": {"suspend": suspended}, "status": {}})


def workload(attempt: int, *conditions: dict[str, Any]) -> dict[str, Any]:
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": f"faq-a{attempt}"}
    status = {"conditions": list(conditions), "admission": {"clusterQueue": "gpus"}}
    meta = {"name": f"job-faq-a{attempt}-1", "ownerReferences": [owner]}
    return workload_snapshot({"metadata": meta, "spec": {"queueName": "team-a"}, "status": status})


def running(attempt: int) -> dict[str, Any]:
    meta = {"name": f"faq-a{attempt}-x", "labels": {names.LABEL_ATTEMPT: str(attempt)}}
    status = {
        "phase": "Running",
        "containerStatuses": [{"name": "trainer", "state": {"running": {}}}],
    }
    return pod_snapshot({"metadata": meta, "spec": {"nodeName": "kwok-gpu-0"}, "status": status})


def plan(
    b: dict[str, Any], jobs: list[Any] = (), pods: list[Any] = (), wls: list[Any] = ()
) -> Plan:  # type: ignore[assignment]
    observed = Observed(list(jobs), list(pods), {w["job"]: w for w in wls})
    return plan_reconcile(b, observed, Settings(), NOW)


def started(spec: dict[str, Any] = QUEUED_SPEC) -> dict[str, Any]:
    return advance(body(spec), plan(body(spec)))


def test_a_queued_job_is_created_suspended_with_the_queue_priority_and_user_metadata() -> None:
    p = plan(body(QUEUED_SPEC))
    built = next(o for o in p.apply if o["kind"] == "Job")
    assert built["spec"]["suspend"] is True
    assert built["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert built["metadata"]["labels"]["team"] == "nlp"
    assert built["metadata"]["annotations"]["cost-center"] == "42"
    template = built["spec"]["template"]
    assert template["spec"]["priorityClassName"] == "high"
    assert template["metadata"]["labels"]["team"] == "nlp"
    assert template["metadata"]["annotations"]["cost-center"] == "42"
    assert template["metadata"]["labels"][names.LABEL_FTJ] == "faq"  # ours stay


def test_without_a_queue_the_job_runs_at_once() -> None:
    built = next(o for o in plan(body()).apply if o["kind"] == "Job")
    assert "suspend" not in built["spec"]
    assert "kueue.x-k8s.io/queue-name" not in built["metadata"]["labels"]


def test_the_queue_label_on_the_finetunejob_works_too() -> None:
    b = body()
    b["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-b"}
    built = next(o for o in plan(b).apply if o["kind"] == "Job")
    assert built["spec"]["suspend"] is True
    assert built["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-b"


def test_a_multi_node_job_is_one_suspended_job_for_every_pod() -> None:
    spec = {**QUEUED_SPEC, "resources": {"gpusPerNode": 8, "nodes": 2}}
    built = next(o for o in plan(body(spec)).apply if o["kind"] == "Job")
    assert built["spec"]["suspend"] is True
    assert built["spec"]["parallelism"] == built["spec"]["completions"] == 2


@pytest.mark.parametrize(
    ("where", "key"),
    [
        ("labels", "kueue.x-k8s.io/queue-name"),
        ("labels", "kubetune.io/finetunejob"),
        ("annotations", "kubetune.io/finetunejob"),
        ("labels", "app.kubernetes.io/managed-by"),
        ("labels", "batch.kubernetes.io/job-name"),
    ],
)
def test_reserved_keys_are_refused_naming_the_key(where: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"scheduling.{where}.*{key}.*reserved"):
        parse_spec({**SPEC, "scheduling": {where: {key: "x"}}})


def test_waiting_shows_kueues_reason_and_since_when() -> None:
    b = started()
    p = plan(b, [job(0, True)], [], [workload(0, PENDING)])
    assert p.status.phase == "Pending"
    queued = next(c for c in p.status.conditions or [] if c.type == "Queued")
    assert (queued.status, queued.reason) == ("True", "Pending")
    assert "insufficient unused quota for nvidia.com/gpu" in (queued.message or "")
    assert queued.last_transition_time == "2026-01-02T03:04:05Z"
    assert "Queued in LocalQueue team-a since 2026-01-02T03:04:05Z" in (p.status.message or "")
    assert [e.reason for e in p.events] == ["Queued"]
    assert p.requeue_after is None and p.delete_jobs == []


def test_before_kueue_made_a_workload_the_status_says_so() -> None:
    p = plan(started(), [job(0, True)])
    queued = next(c for c in p.status.conditions or [] if c.type == "Queued")
    assert queued.reason == "WaitingForWorkload" and "team-a" in (queued.message or "")


def test_queued_time_does_not_count_towards_the_pending_timeout() -> None:
    spec = {**QUEUED_SPEC, "pendingTimeoutSeconds": 1}
    b = started(spec)
    later = plan_reconcile(b, Observed([job(0, True)], [], {}), Settings(), NOW.replace(hour=9))
    assert later.status.phase == "Pending"


def test_admission_is_an_event_and_clears_queued() -> None:
    b = started()
    b = advance(b, plan(b, [job(0, True)], [], [workload(0, PENDING)]))
    p = plan(b, [job(0, False)], [running(0)], [workload(0, *ADMITTED)])
    assert p.status.phase == "Running"
    queued = next(c for c in p.status.conditions or [] if c.type == "Queued")
    assert (queued.status, queued.reason) == ("False", "Admitted")
    assert [e.reason for e in p.events] == ["Admitted", "Running"]
    assert "ClusterQueue gpus" in p.events[0].message


def test_a_kueue_eviction_is_a_disruption_then_readmission() -> None:
    b = started()
    b = advance(b, plan(b, [job(0, True)], [], [workload(0, PENDING)]))
    b = advance(b, plan(b, [job(0, False)], [running(0)], [workload(0, *ADMITTED)]))
    p = plan(b, [job(0, True)], [running(0)], [workload(0, *ADMITTED, EVICTED)])
    assert p.status.phase == "Retrying"
    ended, nxt = (p.status.attempts or [])[-2:]
    assert ended.result == PREEMPTED and "Kueue evicted" in (ended.message or "")
    assert "Preempted to accommodate" in (ended.message or "")
    assert "none of" not in (nxt.reason or "") and "disruption 1 of 10" in (nxt.reason or "")
    assert p.delete_jobs == ["faq-a0"]  # else Kueue would admit the evicted Job again
    assert next(o for o in p.apply if o["kind"] == "Job")["spec"]["suspend"] is True
    assert [e.reason for e in p.events] == [PREEMPTED, "AttemptStarted"]
    b = advance(b, p)
    b = advance(b, plan(b, [job(1, True)], [], [workload(1, PENDING)]))
    again = plan(b, [job(1, False)], [running(1)], [workload(1, *ADMITTED)])
    assert again.events[0].reason == "Readmitted"
    assert "resumes from the last checkpoint" in again.events[0].message


def test_pods_stopped_by_a_kueue_suspension_are_a_disruption_not_a_failure() -> None:
    b = started()
    b = advance(b, plan(b, [job(0, False)], [running(0)], [workload(0, *ADMITTED)]))
    stopped = pod_snapshot(
        {
            "metadata": {"name": "faq-a0-x", "labels": {names.LABEL_ATTEMPT: "0"}},
            "spec": {"nodeName": "kwok-gpu-0"},
            "status": {"phase": "Failed", "reason": "Terminated"},
        }
    )
    p = plan(b, [job(0, True)], [stopped], [])
    assert (p.status.attempts or [])[0].result == PREEMPTED
    assert p.delete_jobs == ["faq-a0"]


def test_indexes_find_workloads_by_job_name() -> None:
    wl = workload(0, PENDING)
    indexes = Indexes({("ns", "faq"): [job(0, True)]}, {}, {("ns", "faq-a0"): [wl]})
    assert indexes.observed(("ns", "faq")).workloads == {"faq-a0": wl}


def test_an_admission_no_reconcile_saw_waiting_is_recorded_once() -> None:
    b = started()
    p = plan(b, [job(0, False)], [running(0)], [workload(0, *ADMITTED)])
    assert [e.reason for e in p.events] == ["Admitted", "Running"]
    b = advance(b, p)
    again = plan(b, [job(0, False)], [running(0)], [workload(0, *ADMITTED)])
    assert again.events == []


def test_no_queue_no_queued_condition() -> None:
    b = advance(body(), plan(body()))
    p = plan(b, [job(0, False, queue=None)], [running(0)])
    assert all(c.type != "Queued" for c in p.status.conditions or [])
    assert [e.reason for e in p.events] == ["Running"]


def test_search_trials_queue_too_and_an_evicted_trial_job_is_deleted() -> None:
    from . import test_search

    spec = {**test_search.SPEC, "scheduling": {"queueName": "team-a"}}
    b = test_search.body(spec)
    first = test_search.plan(b)
    built = [o for o in first.apply if o["kind"] == "Job"]
    assert [o["spec"]["suspend"] for o in built] == [True, True]
    assert {o["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] for o in built} == {"team-a"}
    b = test_search.advance(b, first)
    jobs = [test_search.trial_job(first, 0), test_search.trial_job(first, 1)]
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "hpo-t0"}
    evicted = workload_snapshot(
        {
            "metadata": {"name": "job-hpo-t0-1", "ownerReferences": [owner]},
            "status": {"conditions": [*ADMITTED, EVICTED]},
        }
    )
    p = plan_reconcile(b, Observed(jobs, [], {"hpo-t0": evicted}), Settings(), NOW)
    assert p.delete_jobs == ["hpo-t0"]
    assert (p.status.trials or [])[0].result == PREEMPTED
