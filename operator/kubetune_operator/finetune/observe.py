"""What the children of a FineTuneJob say about the current attempt: pure reads of Job and pods.

`job_snapshot` and `pod_snapshot` keep the few fields the operator needs (the handlers index
them in memory, so reconciling reads no lists from the API server). `observe_attempt` turns the
snapshots of one attempt into an `Observation`: Missing, Queued (a Job suspended until Kueue
admits it, with Kueue's reason from its Workload: `queue`), Pending (Unschedulable,
ImagePullBackOff, ...), Running, Succeeded or Failed with a `Failure` parsed from the trainer's
termination message (`{"reason": "OutOfMemory", "exitCode": 4, "step": ..., ...}`), its exit
code, or the container's own reason (`OOMKilled`). A disruption reads as `Preempted` whatever the
exit: the trainer's own exit 6, a pod with the `DisruptionTarget` condition (preemption,
eviction, drain, taint), or the Job failed by the podFailurePolicy rule that matched one of them
(`build.job.POD_FAILURE_POLICY`: the pod may be gone by then), or Kueue evicted the Job's
Workload (preemption by a higher priority). A search trial's children carry a trial
label instead of an attempt label, and `succeeded_eval_loss` reads a finished trial's result
from its pod. Called by `plan`, `search` and `handlers` (the snapshots).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kubetune_api.scheduling import QUEUE_LABEL
from kubetune_api.termination import EXIT_REASONS, PREEMPTED, SUCCEEDED, TerminationReason
from kubetune_operator import names
from kubetune_operator.finetune.failure import Failure
from kubetune_operator.finetune.queue import eviction, waiting
from kubetune_operator.names import TRAINER_CONTAINER

# Why a pod can wait for good: these become the failure reason once pendingTimeoutSeconds passes.
PENDING_REASONS = ("Unschedulable", "ImagePullBackOff", "ErrImagePull", "InvalidImageName")
PULL_ERRORS = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError"}
)
State = Literal["Missing", "Queued", "Pending", "Running", "Succeeded", "Failed"]
Json = dict[str, Any]


@dataclass(frozen=True)
class Observation:
    """The current attempt as its Job and pods show it."""

    state: State
    reason: str = ""
    message: str = ""
    failure: Failure | None = None
    scheduled: bool = False
    evicted: bool = False  # Kueue took the Job back: delete it, or Kueue admits it again


def _index(meta: Json, label: str = names.LABEL_ATTEMPT) -> int:
    """The attempt (or trial) number a child is labelled with; -1 when it has none."""
    try:
        return int(meta.get("labels", {}).get(label, "-1"))
    except ValueError:
        return -1


def job_snapshot(body: Json) -> Json:
    """The fields of a Job that `observe_attempt` reads."""
    meta, status = body.get("metadata", {}), body.get("status") or {}
    return {
        "name": meta.get("name"),
        "attempt": _index(meta),
        "trial": _index(meta, names.LABEL_TRIAL),
        "params": meta.get("annotations", {}).get(names.ANNOTATION_PARAMS),
        "suspended": bool((body.get("spec") or {}).get("suspend")),
        "queue": meta.get("labels", {}).get(QUEUE_LABEL),
        "conditions": [
            {k: c.get(k) for k in ("type", "status", "reason", "message")}
            for c in status.get("conditions") or []
        ],
    }


def pod_snapshot(body: Json) -> Json:
    """The fields of a trainer pod that `observe_attempt` reads."""
    meta, spec, status = body.get("metadata", {}), body.get("spec") or {}, body.get("status") or {}
    return {
        "name": meta.get("name"),
        "attempt": _index(meta),
        "trial": _index(meta, names.LABEL_TRIAL),
        "nodeName": spec.get("nodeName"),
        "phase": status.get("phase", "Pending"),
        "reason": status.get("reason"),
        "message": status.get("message"),
        "conditions": status.get("conditions") or [],
        "containerStatuses": status.get("containerStatuses") or [],
    }


def _condition(conditions: list[Json], kind: str) -> Json:
    return next((c for c in conditions if c.get("type") == kind), {})


def _container(pod: Json) -> Json:
    statuses = pod["containerStatuses"]
    return next((c for c in statuses if c.get("name") == TRAINER_CONTAINER), {})


def _disrupted(pod: Json, failure: Failure) -> Failure:
    """A pod the cluster disrupted failed because of that, not because of the run."""
    cond = _condition(pod["conditions"], "DisruptionTarget")
    if failure.reason == PREEMPTED or cond.get("status") != "True":
        return failure
    why = f"{cond.get('reason') or 'DisruptionTarget'}: {cond.get('message') or 'pod disrupted'}"
    return Failure(PREEMPTED, why, failure.exit_code, failure.step, failure.checkpoint)


def pod_failure(pod: Json) -> Failure:
    """Why a failed pod failed: a disruption > OOMKilled > the trainer's JSON reason > exit code
    > pod reason."""
    return _disrupted(pod, _container_failure(pod))


def _container_failure(pod: Json) -> Failure:
    state = _container(pod).get("state") or {}
    term = state.get("terminated") or (_container(pod).get("lastState") or {}).get("terminated")
    if not term:
        return Failure(pod.get("reason") or "PodFailed", pod.get("message") or "")
    parsed = TerminationReason.parse(term.get("message")) or TerminationReason("")
    code = term.get("exitCode")
    reason = term.get("reason")
    if reason != "OOMKilled":
        reason = parsed.reason or EXIT_REASONS.get(code or 0) or reason or "Error"
    message = parsed.message or (term.get("message") or "").strip()
    if not message:
        message = f"container {TRAINER_CONTAINER} exited with code {code}"
    return Failure(reason, message, code, parsed.step, parsed.checkpoint or None)


def succeeded_line(pods: list[Json]) -> TerminationReason | None:
    """The `Succeeded` termination line of a finished trainer (adapter URI, size, hash), if any."""
    for pod in pods:
        term = (_container(pod).get("state") or {}).get("terminated") or {}
        parsed = TerminationReason.parse(term.get("message"))
        if parsed and parsed.reason == SUCCEEDED:
            return parsed
    return None


def succeeded_eval_loss(pods: list[Json]) -> float | None:
    """The final eval loss a finished trainer wrote into its `Succeeded` termination line."""
    for pod in pods:
        term = (_container(pod).get("state") or {}).get("terminated") or {}
        parsed = TerminationReason.parse(term.get("message"))
        loss = parsed.evalLoss if parsed and parsed.reason == SUCCEEDED else None
        if isinstance(loss, int | float) and not isinstance(loss, bool):
            return float(loss)
    return None


def _failed(pod: Json) -> bool:
    if pod["phase"] == "Failed":
        return True
    term = (_container(pod).get("state") or {}).get("terminated") or {}
    return bool(term) and term.get("exitCode", 0) != 0


def _best_failure(pods: list[Json]) -> Failure:
    """Several failed pods (multi-node): the most specific reason wins."""
    failures = [pod_failure(p) for p in pods]
    return min(
        failures, key=lambda f: (f.reason in ("Error", "PodFailed"), f.reason != "OOMKilled")
    )


def _job_failure(job: Json) -> Failure | None:
    cond = _condition(job["conditions"], "Failed")
    if cond.get("status") != "True":
        return None
    reason, message = cond.get("reason") or "Error", cond.get("message") or ""
    reason = "Error" if reason == "BackoffLimitExceeded" else reason
    if reason == "PodFailurePolicy":  # build.job.POD_FAILURE_POLICY: both rules are disruptions
        return Failure(PREEMPTED, message or f"Job {job['name']} was disrupted")
    return Failure(reason, message or f"Job {job['name']} failed")


def _pending(pods: list[Json]) -> Observation | None:
    for pod in pods:
        cond = _condition(pod["conditions"], "PodScheduled")
        if cond.get("status") == "False":
            reason = cond.get("reason") or "Unschedulable"
            return Observation("Pending", reason, cond.get("message") or "")
    for pod in pods:
        waiting = (_container(pod).get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in PULL_ERRORS:
            return Observation(
                "Pending", waiting["reason"], waiting.get("message") or "", scheduled=True
            )
    return None


def _queued(job: Json, pods: list[Json], workload: Json | None) -> Observation | None:
    """A Job under Kueue: evicted (a disruption, before any pod failure it causes: Kueue stops
    the pods by suspending the Job), or still suspended, waiting for admission."""
    evicted = eviction(workload)
    if evicted is not None:
        why = f"Kueue evicted workload {workload and workload['name']}: {evicted[0]}: {evicted[1]}"
        failed = [p for p in pods if _failed(p)]
        own = _best_failure(failed) if failed else Failure(PREEMPTED)
        if own.reason != PREEMPTED:  # the trainer's own checkpoint line, when it wrote one
            own = Failure(PREEMPTED)
        failure = Failure(PREEMPTED, why, own.exit_code, own.step, own.checkpoint)
        return Observation("Failed", "Evicted", failure=failure, evicted=True)
    if not job.get("suspended"):
        return None
    if any(_failed(p) for p in pods):  # stopped by a suspension we did not ask for
        why = f"Kueue evicted Job {job['name']}: it suspended the Job and its pods were stopped"
        return Observation("Failed", "Evicted", failure=Failure(PREEMPTED, why), evicted=True)
    reason, message = waiting(workload, job["name"], job.get("queue"))
    return Observation("Queued", reason, message)


def observe_attempt(
    job: Json | None, pods: list[Json], nodes: int, workload: Json | None = None
) -> Observation:
    """The state of one attempt from its Job, pods and Kueue Workload (snapshots)."""
    if job is None:
        return Observation("Missing", "JobNotFound")
    if _condition(job["conditions"], "Complete").get("status") == "True":
        return Observation("Succeeded", "Completed", scheduled=True)
    queued = _queued(job, pods, workload) if job.get("queue") else None
    if queued is not None:
        return queued
    failed = [p for p in pods if _failed(p)]
    if failed:
        return Observation("Failed", "PodFailed", failure=_best_failure(failed), scheduled=True)
    job_failure = _job_failure(job)
    if job_failure is not None:
        return Observation("Failed", job_failure.reason, failure=job_failure)
    if len([p for p in pods if p["phase"] == "Succeeded"]) >= nodes:
        return Observation("Succeeded", "Completed", scheduled=True)
    pending = _pending(pods)
    if pending is not None:
        return pending
    bound = len([p for p in pods if p.get("nodeName")]) >= nodes
    if bound and all(p["phase"] in ("Running", "Succeeded") for p in pods):
        return Observation("Running", "Running", scheduled=True)
    return Observation("Pending", "ContainerCreating" if bound else "Created", scheduled=bound)
