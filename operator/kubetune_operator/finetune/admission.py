"""The status of an attempt whose Job waits in a Kueue queue, and the Events of its admission.

    Job suspended, Kueue has not admitted it  -> phase Pending (Retrying after a failure),
                                                 condition Queued=True with Kueue's own reason
                                                 and message; lastTransitionTime is when it began
                                                 waiting; Event Queued once
    Kueue admitted it (the Job runs)          -> Queued=False reason Admitted; Event Admitted,
                                                 or Readmitted after a Kueue preemption
A Kueue preemption itself (Workload Evicted) is a disruption, handled like any other by
`attempts` (Event Preempted, next attempt from the checkpoint, within retry.maxPreemptions).
While queued, spec.pendingTimeoutSeconds does not run: waiting for quota is the queue's job.
Pure; called by `plan`.
"""

from __future__ import annotations

from kubetune_api.status import Attempt, FineTuneJobStatus
from kubetune_api.termination import PREEMPTED
from kubetune_operator.finetune.observe import Observation
from kubetune_operator.finetune.plan_types import Context, Json
from kubetune_operator.finetune.queue import admitted_to
from kubetune_operator.status import Event, condition, set_condition, shorten

QUEUED = "Queued"
KUEUE_EVICTED = "Kueue evicted"  # how observe words a Kueue preemption (Attempt.message)


def queued_status(
    ctx: Context, status: FineTuneJobStatus, attempts: list[Attempt], obs: Observation
) -> tuple[FineTuneJobStatus, list[Event]]:
    """The status while the current attempt's Job waits for Kueue, and Event Queued once."""
    current, queue = attempts[-1], ctx.spec.scheduling.queue_name
    retrying = len(attempts) > 1 and attempts[-2].result not in (None, "Suspended")
    before = condition(status, QUEUED)
    conditions = set_condition(
        list(status.conditions or []), QUEUED, True, obs.reason, obs.message, ctx.now
    )
    conditions = set_condition(conditions, "Running", False, QUEUED, "", ctx.now)
    since = next(c.last_transition_time for c in conditions if c.type == QUEUED)
    text = (
        f"Queued in LocalQueue {queue} since {since} (attempt {current.index}, job "
        f"{current.job_name}): {obs.reason}: {obs.message}"
    )
    new = status.model_copy(
        update={
            "phase": "Retrying" if retrying else "Pending",
            "conditions": conditions,
            "message": shorten(text),
        }
    )
    events = []
    if before is None or before.status != "True":
        events.append(Event("Normal", QUEUED, shorten(text, 1000)))
    return new, events


def admitted(
    ctx: Context,
    status: FineTuneJobStatus,
    attempts: list[Attempt],
    obs: Observation,
    workload: Json | None,
) -> tuple[FineTuneJobStatus, list[Event]]:
    """Queued turns False once the Job left the queue (whether or not a reconcile saw it
    waiting: Kueue may admit at once); Event Admitted (or Readmitted), once per attempt."""
    current, before = attempts[-1], condition(status, QUEUED)
    if not ctx.spec.scheduling.queue_name or obs.state in (QUEUED, "Missing") or obs.evicted:
        return status, []  # evicted: the next attempt queues again
    said = before.message or "" if before is not None and before.status == "False" else ""
    if f"(job {current.job_name})" in said:
        return status, []  # this attempt's admission is recorded already
    queue = admitted_to(workload)
    where = f"ClusterQueue {queue}" if queue else "Kueue"
    again = any(
        a.result == PREEMPTED and (a.message or "").startswith(KUEUE_EVICTED) for a in attempts[:-1]
    )
    reason = "Readmitted" if again else "Admitted"
    text = f"{where} admitted attempt {current.index} (job {current.job_name})" + (
        " after a preemption; it resumes from the last checkpoint" if again else ""
    )
    conditions = set_condition(list(status.conditions or []), QUEUED, False, reason, text, ctx.now)
    return status.model_copy(update={"conditions": conditions}), [Event("Normal", reason, text)]
