"""What Kueue says about a queued Job: pure reads of its Workload (kueue.x-k8s.io/v1beta2).

Kueue makes one Workload per Job it manages (owner reference: the Job); a multi-node Job is one
Workload whose pod set counts every pod, so it is admitted all at once or not at all.
`workload_snapshot` keeps the few fields read here (the handlers index it in memory, keyed by the
Job's name); `waiting` is Kueue's own reason and message while the Job waits (QuotaReserved=False:
"couldn't assign flavors to pod set main: insufficient unused quota ..."), `eviction` the reason
an admitted Job was taken back (Evicted=True: Preempted, PodsReadyTimeout, ...), `admitted_to`
the ClusterQueue that admitted it. `queue_name` resolves `spec.scheduling.queueName`, else the
FineTuneJob's own `kueue.x-k8s.io/queue-name` label. Called by `observe`, `plan` and `handlers`.
"""

from __future__ import annotations

from typing import Any

from kubetune_api.finetune import FineTuneJobSpec
from kubetune_api.scheduling import QUEUE_LABEL

Json = dict[str, Any]
GROUP, VERSION, PLURAL = "kueue.x-k8s.io", "v1beta2", "workloads"


def queue_name(spec: FineTuneJobSpec, body: Json) -> str | None:
    """The LocalQueue this FineTuneJob's Jobs go to, if any (the spec wins over the label)."""
    label = (body.get("metadata", {}).get("labels") or {}).get(QUEUE_LABEL)
    return spec.scheduling.queue_name or label or None


def with_queue(spec: FineTuneJobSpec, body: Json) -> FineTuneJobSpec:
    """`spec` with `scheduling.queueName` filled in from the FineTuneJob's label."""
    queue = queue_name(spec, body)
    if queue is None or queue == spec.scheduling.queue_name:
        return spec
    scheduling = spec.scheduling.model_copy(update={"queue_name": queue})
    return spec.model_copy(update={"scheduling": scheduling})


def owner_job(body: Json) -> str | None:
    """The name of the batch/v1 Job a Workload belongs to."""
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == "Job" and str(ref.get("apiVersion", "")).startswith("batch/"):
            return str(ref.get("name"))
    return None


def workload_snapshot(body: Json) -> Json:
    """The fields of a Workload that `waiting`, `eviction` and `admitted_to` read."""
    meta, spec, status = body.get("metadata", {}), body.get("spec") or {}, body.get("status") or {}
    return {
        "name": meta.get("name"),
        "job": owner_job(body),
        "queueName": spec.get("queueName"),
        "clusterQueue": (status.get("admission") or {}).get("clusterQueue"),
        "conditions": [
            {k: c.get(k) for k in ("type", "status", "reason", "message")}
            for c in status.get("conditions") or []
        ],
    }


def _condition(workload: Json, kind: str) -> Json:
    return next((c for c in workload["conditions"] if c.get("type") == kind), {})


def eviction(workload: Json | None) -> tuple[str, str] | None:
    """(reason, message) when Kueue evicted the admitted workload (preemption and the like)."""
    if workload is None:
        return None
    cond = _condition(workload, "Evicted")
    if cond.get("status") != "True":
        return None
    return cond.get("reason") or "Evicted", cond.get("message") or "evicted by Kueue"


def waiting(workload: Json | None, job: str, queue: str | None) -> tuple[str, str]:
    """(reason, message) of a Job Kueue has not started: its own words when it gave any."""
    if workload is None:
        where = f"LocalQueue {queue}" if queue else "a LocalQueue"
        return "WaitingForWorkload", f"Kueue has not made a Workload for Job {job} yet ({where})"
    quota = _condition(workload, "QuotaReserved")
    if quota.get("status") == "True":
        return "Admitted", f"admitted by ClusterQueue {workload.get('clusterQueue')}; starting"
    if quota:
        return quota.get("reason") or "Pending", quota.get("message") or "waiting for quota"
    return "Pending", f"Workload {workload['name']} waits for Kueue to consider it"


def admitted_to(workload: Json | None) -> str | None:
    """The ClusterQueue that admitted the workload, once it has."""
    if workload is None or _condition(workload, "Admitted").get("status") != "True":
        return None
    return str(workload.get("clusterQueue") or "") or None
