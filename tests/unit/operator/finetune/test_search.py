"""The plan of a FineTuneJob with spec.search: trial Jobs, TPE values, results, the best adapter."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from kubetune_api.extras import SearchSpec
from kubetune_operator import names
from kubetune_operator.finetune.observe import job_snapshot, pod_snapshot
from kubetune_operator.finetune.plan import Observed, Plan, plan_reconcile
from kubetune_operator.finetune.search import from_status_params, to_status_params
from kubetune_operator.settings import Settings
from kubetune_operator.status import status_patch

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SEARCH = {
    "trials": 4,
    "parallelTrials": 2,
    "seed": 3,
    "space": {
        "learningRate": {"low": 1e-5, "high": 1e-2, "log": True},
        "rank": {"choices": [4, 8]},
    },
}
SPEC: dict[str, Any] = {
    "model": {"name": "Qwen/Qwen3-0.6B"},
    "dataset": {
        "train": {"pvc": {"claimName": "data", "path": "train.jsonl"}},
        "eval": {"pvc": {"claimName": "data", "path": "eval.jsonl"}},
    },
    "training": {"microBatchSize": 4, "learningRate": 3e-4},
    "resources": {"gpusPerNode": 1},
    "output": {"pvc": {"claimName": "out", "path": "hpo"}},
    "search": SEARCH,
}


def body(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "hpo", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": spec or SPEC,
        "status": {},
    }


def advance(b: dict[str, Any], p: Plan) -> dict[str, Any]:
    status = dict(b["status"])
    for key, value in status_patch(b["status"], p.status, p.status_keys).items():
        if value is None:
            status.pop(key, None)
        else:
            status[key] = value
    return {**b, "status": status}


def plan(b: dict[str, Any], jobs: list[Any] = (), pods: list[Any] = (), **kw: Any) -> Plan:  # type: ignore[assignment]
    now = kw.pop("now", NOW)
    return plan_reconcile(b, Observed(list(jobs), list(pods)), Settings(), now, **kw)


def trial_job(p: Plan, index: int, *conditions: dict[str, Any]) -> dict[str, Any]:
    """The snapshot of trial `index`'s Job as the plan built it (labels, params annotation)."""
    built = next(
        o for o in p.apply if o["kind"] == "Job" and o["metadata"]["name"] == f"hpo-t{index}"
    )
    return job_snapshot({**built, "status": {"conditions": list(conditions)}})


def tjob(index: int, *conditions: dict[str, Any]) -> dict[str, Any]:
    """A trial Job's snapshot as the watch delivers it once it exists."""
    meta = {"name": f"hpo-t{index}", "labels": {names.LABEL_TRIAL: str(index)}}
    return job_snapshot({"metadata": meta, "status": {"conditions": list(conditions)}})


def trial_pod(index: int, phase: str, state: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": f"hpo-t{index}-x", "labels": {names.LABEL_TRIAL: str(index)}}
    status = {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]}
    return pod_snapshot({"metadata": meta, "spec": {"nodeName": "kwok-gpu-0"}, "status": status})


def done(index: int, eval_loss: float) -> dict[str, Any]:
    line = json.dumps(
        {"reason": "Succeeded", "message": "ok", "exitCode": 0, "evalLoss": eval_loss}
    )
    return trial_pod(index, "Succeeded", {"terminated": {"exitCode": 0, "message": line}})


def crashed(index: int) -> dict[str, Any]:
    line = json.dumps({"reason": "OutOfMemory", "message": "CUDA out of memory", "exitCode": 4})
    return trial_pod(index, "Failed", {"terminated": {"exitCode": 4, "message": line}})


COMPLETE = {"type": "Complete", "status": "True"}
RUNNING = {"running": {}}


def jobs_of(p: Plan) -> list[str]:
    return [o["metadata"]["name"] for o in p.apply if o["kind"] == "Job"]


def config(p: Plan, index: int) -> dict[str, Any]:
    cm = next(
        o for o in p.apply if o["kind"] == "ConfigMap" and o["metadata"]["name"] == f"hpo-t{index}"
    )
    return yaml.safe_load(cm["data"]["config.yaml"])


def test_first_reconcile_starts_parallel_trials_with_distinct_sampled_values() -> None:
    p = plan(body())
    assert jobs_of(p) == ["hpo-t0", "hpo-t1"]
    kinds = [o["kind"] for o in p.apply]
    assert kinds.count("ServiceAccount") == 1 and kinds.count("ConfigMap") == 2
    trials = p.status.trials or []
    assert [t.job_name for t in trials] == ["hpo-t0", "hpo-t1"]
    assert trials[0].params != trials[1].params
    assert p.status.phase == "Pending" and p.status.attempts is None
    assert [e.reason for e in p.events] == ["TrialStarted", "TrialStarted"]
    for t in trials:
        cfg = config(p, t.index)
        assert cfg["training"]["learningRate"] == float(t.params["learningRate"])
        assert cfg["method"]["rank"] == int(t.params["rank"])
        assert cfg["output"]["path"] == f"/mnt/pvc/out/hpo/trials/trial-{t.index:04d}"
        assert "search" not in cfg
        assert 1e-5 <= cfg["training"]["learningRate"] <= 1e-2 and cfg["method"]["rank"] in (4, 8)


def test_trial_pods_report_nothing_and_carry_their_values() -> None:
    p = plan(body())
    job = next(o for o in p.apply if o["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert "KUBETUNE_FINETUNEJOB" not in env and "KUBETUNE_TRIAL" in env
    assert pod["automountServiceAccountToken"] is False
    assert job["metadata"]["labels"][names.LABEL_TRIAL] == "0"
    assert names.LABEL_ATTEMPT not in job["metadata"]["labels"]
    params = json.loads(job["metadata"]["annotations"][names.ANNOTATION_PARAMS])
    assert to_status_params(params) == (p.status.trials or [])[0].params


def test_same_inputs_same_plan() -> None:
    assert plan(body()).apply == plan(body()).apply
    assert plan(body()).status == plan(body()).status


def test_lost_status_patch_replans_the_trial_from_its_job() -> None:
    first = plan(body())
    # The Job of trial 0 exists but the status patch never landed: the same values come back,
    # even with a different sampler history (trial 1 not yet seen).
    again = plan(body(), [trial_job(first, 0)])
    assert (again.status.trials or [])[0].params == (first.status.trials or [])[0].params


def test_a_finished_trial_makes_room_and_the_best_adapter_wins() -> None:
    b = body()
    p = plan(b)
    b = advance(b, p)
    jobs = [tjob(0), tjob(1)]
    p = plan(b, jobs, [trial_pod(0, "Running", RUNNING), trial_pod(1, "Running", RUNNING)])
    assert p.status.phase == "Running" and p.apply == []
    b = advance(b, p)

    later = NOW + timedelta(minutes=10)
    jobs[0] = tjob(0, COMPLETE)
    p = plan(b, jobs, [done(0, 1.5), trial_pod(1, "Running", RUNNING)], now=later)
    trials = p.status.trials or []
    assert trials[0].result == "Succeeded" and trials[0].eval_loss == 1.5
    assert [t.job_name for t in trials] == ["hpo-t0", "hpo-t1", "hpo-t2"]
    assert jobs_of(p) == ["hpo-t2"]
    assert "TrialSucceeded" in [e.reason for e in p.events]
    assert p.status.best_trial == 0 and p.status.metrics and p.status.metrics.eval_loss == 1.5
    assert p.status.progress and (p.status.progress.step, p.status.progress.total_steps) == (1, 4)
    assert p.status.progress.eta_seconds == 1200  # 3 trials left, 2 at a time: 2 x 10 min
    b = advance(b, p)
    assert b["status"]["progress"]["step"] == 1  # the operator writes a search's progress
    jobs.append(tjob(2))

    jobs[1] = tjob(1, COMPLETE)
    pods = [done(0, 1.5), done(1, 0.9), trial_pod(2, "Running", RUNNING)]
    p = plan(b, jobs, pods, now=later)
    assert jobs_of(p) == ["hpo-t3"] and p.status.best_trial == 1
    b = advance(b, p)
    jobs.append(tjob(3))

    jobs[2], jobs[3] = tjob(2, COMPLETE), tjob(3, {"type": "Failed", "status": "True"})
    pods = [done(0, 1.5), done(1, 0.9), done(2, 1.1), crashed(3)]
    p = plan(b, jobs, pods, now=later)
    trials = p.status.trials or []
    assert [t.result for t in trials] == ["Succeeded", "Succeeded", "Succeeded", "OutOfMemory"]
    assert p.status.phase == "Succeeded"
    assert (
        p.status.output
        and p.status.output.adapter_path == "pvc://out/hpo/trials/trial-0001/adapter"
    )
    assert "best trial 1" in (p.status.message or "")
    assert [e.reason for e in p.events] == ["TrialSucceeded", "TrialFailed", "Succeeded"]
    assert p.status.progress and p.status.progress.percent == 100.0
    b = advance(b, p)
    assert plan(b, jobs, pods).apply == []  # ended: nothing more


def test_every_trial_failing_fails_the_job() -> None:
    spec = {**SPEC, "search": {**SEARCH, "trials": 2}}
    b = body(spec)
    p = plan(b)
    b = advance(b, p)
    failed = [tjob(i, {"type": "Failed", "status": "True"}) for i in (0, 1)]
    p = plan(b, failed, [crashed(0), crashed(1)])
    assert p.status.phase == "Failed"
    assert "none of the 2 trials succeeded" in (p.status.message or "")


def test_a_trial_without_eval_loss_counts_as_failed() -> None:
    b = body()
    p = plan(b)
    b = advance(b, p)
    silent = trial_pod(0, "Succeeded", {"terminated": {"exitCode": 0, "message": ""}})
    p = plan(b, [tjob(0, COMPLETE), tjob(1)], [silent])
    assert (p.status.trials or [])[0].result == "NoEvalLoss"


def test_suspend_deletes_running_trials_and_resume_recreates_them() -> None:
    b = body()
    p = plan(b)
    b = advance(b, p)
    jobs = [tjob(0), tjob(1)]
    b["spec"] = {**SPEC, "suspend": True}
    p = plan(b, jobs, [])
    assert p.status.phase == "Suspended" and sorted(p.delete_jobs) == ["hpo-t0", "hpo-t1"]
    b = advance(b, p)
    b["spec"] = SPEC
    p = plan(b, [], [])
    assert jobs_of(p) == ["hpo-t0", "hpo-t1"] and len(p.status.trials or []) == 2
    suspended = next(c for c in p.status.conditions or [] if c.type == "Suspended")
    assert suspended.status == "False"


def test_pending_timeout_fails_the_search() -> None:
    spec = {**SPEC, "pendingTimeoutSeconds": 60}
    b = body(spec)
    p = plan(b)
    b = advance(b, p)
    unschedulable = trial_pod(0, "Pending", {"waiting": {}})
    unschedulable["nodeName"] = None
    unschedulable["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes",
        }
    ]
    jobs = [tjob(0), tjob(1)]
    p = plan(b, jobs, [unschedulable], now=NOW + timedelta(seconds=30))
    assert p.status.phase == "Pending" and p.requeue_after == pytest.approx(30)
    p = plan(b, jobs, [unschedulable], now=NOW + timedelta(seconds=61))
    assert p.status.phase == "Failed" and "Unschedulable" in (p.status.message or "")
    assert sorted(p.delete_jobs) == ["hpo-t0", "hpo-t1"]


def test_status_params_round_trip_exactly() -> None:
    search = SearchSpec.model_validate(SEARCH)
    params = {"learning_rate": 0.00044303752452182633, "rank": 8}
    wire = to_status_params(params)
    assert wire == {"learningRate": "0.00044303752452182633", "rank": "8"}
    assert from_status_params(search, wire) == params


def test_search_without_eval_data_is_invalid_spec() -> None:
    spec = {**SPEC, "dataset": {"train": SPEC["dataset"]["train"]}}
    p = plan(body(spec))
    assert p.status.phase == "Failed" and p.apply == []
    assert "spec.dataset.eval" in (p.status.message or "")


def test_a_model_deployment_serves_the_best_trial() -> None:
    from kubetune_operator.serving.adapters import from_finetunejob

    ref = "pvc://out/hpo/trials/trial-0001/adapter"
    body = {"status": {"phase": "Succeeded", "output": {"adapterPath": ref}}}
    assert from_finetunejob("hpo", body) == (
        "/mnt/pvc/out/hpo/trials/trial-0001/adapter",
        ref,
        "out",
    )
