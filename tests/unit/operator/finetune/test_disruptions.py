"""Disruptions (preemption, eviction, pod deletion) spend maxPreemptions, never maxRetries;
a child the API server refuses fails the job as Rejected; the Job carries what a disruption needs."""

from __future__ import annotations

from typing import Any

from kubetune_api.status import Attempt, FineTuneJobStatus
from kubetune_operator.finetune.attempts import rejected
from kubetune_operator.finetune.build.job import POD_FAILURE_POLICY, build_job
from kubetune_operator.finetune.observe import job_snapshot, observe_attempt
from kubetune_operator.finetune.plan_types import Plan
from kubetune_operator.names import Run
from kubetune_operator.owner import Owner
from kubetune_operator.settings import Settings
from unit.operator.finetune.test_plan import NOW, SPEC, advance, body, failed, job, plan, pod

OWNER = Owner("ns", "faq", "uid-1")
DISRUPTED = {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}


def preempted(attempt: int) -> dict[str, Any]:
    return failed(attempt, 6, "Preempted", checkpoint="/x/checkpoints/step-000010")


def test_job_has_the_disruption_policy_grace_period_and_run_id() -> None:
    spec = plan(body()).apply[-1]["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["podFailurePolicy"] == POD_FAILURE_POLICY
    pod_spec = spec["template"]["spec"]
    assert pod_spec["terminationGracePeriodSeconds"] == 120
    env = {e["name"]: e.get("value") for e in pod_spec["containers"][0]["env"]}
    assert env["KUBETUNE_RUN_ID"] == "u1"  # the FineTuneJob's uid


def test_spec_grace_period_wins_over_the_setting() -> None:
    from kubetune_operator.finetune.validation import parse_spec

    raw = {**SPEC, "resources": {"gpusPerNode": 1, "terminationGracePeriodSeconds": 600}}
    made = build_job(OWNER, parse_spec(raw), Run(0), Settings(termination_grace_seconds=30))
    assert made["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 600


def test_disruptions_are_preempted_whatever_the_pod_shows() -> None:
    exit6 = failed(0, 6)  # no termination line: the exit code alone
    killed = pod(
        0, "Failed", {"terminated": {"exitCode": 137, "reason": "Error"}}, conditions=[DISRUPTED]
    )
    policy = job_snapshot(
        {
            "metadata": {"name": "faq-a0", "labels": {"kubetune.io/attempt": "0"}},
            "status": {
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "PodFailurePolicy",
                        "message": "Pod ns/faq-a0-x has condition DisruptionTarget matching "
                        "FailJob rule at index 1",
                    }
                ]
            },
        }
    )
    for observed in (observe_attempt(job(0), [exit6], 1), observe_attempt(job(0), [killed], 1)):
        assert observed.failure is not None and observed.failure.reason == "Preempted"
    gone = observe_attempt(policy, [], 1)  # the pod is already deleted
    assert gone.failure is not None and gone.failure.reason == "Preempted"
    assert "DisruptionTarget" in gone.failure.message


def test_preemptions_spend_no_retries_and_resume_unchanged() -> None:
    raw = {**SPEC, "retry": {"maxRetries": 1, "maxPreemptions": 3}}
    b = advance(body(raw), plan(body(raw)))
    b = advance(b, plan(b, [job(0)], [failed(0, 4, "OutOfMemory")]))
    for attempt in (1, 2, 3):
        p = plan(b, [job(i) for i in range(attempt + 1)], [preempted(attempt)])
        b = advance(b, p)
        assert b["status"]["phase"] == "Retrying", b["status"]["message"]
        nxt = b["status"]["attempts"][-1]
        assert nxt["changes"] == b["status"]["attempts"][1]["changes"]  # the OOM override stays
        assert f"disruption {attempt} of 3" in nxt["reason"]
    assert [a["result"] for a in b["status"]["attempts"][:-1]] == [
        "OutOfMemory",
        "Preempted",
        "Preempted",
        "Preempted",
    ]
    p = plan(b, [job(i) for i in range(5)], [preempted(4)])
    assert p.status.phase == "Failed" and "disruptions exhausted (3 allowed)" in (
        p.status.message or ""
    )


def test_a_refused_child_fails_the_job_as_rejected() -> None:
    status = FineTuneJobStatus(phase="Pending", attempts=[Attempt(index=0, job_name="faq-a0")])
    obj = {"kind": "Job", "metadata": {"name": "faq-a0"}}
    p = rejected(Plan(status, apply=[obj]), obj, 'Job.batch "faq-a0" is invalid: bad', NOW)
    assert p.apply == [] and p.status.phase == "Failed"
    assert (p.status.attempts or [])[0].result == "Rejected"
    assert "Job faq-a0" in (p.status.message or "") and "is invalid: bad" in (
        p.status.message or ""
    )
    cond = next(c for c in p.status.conditions or [] if c.type == "Failed")
    assert cond.reason == "Rejected"
    assert [e.reason for e in p.events] == ["Rejected"]
