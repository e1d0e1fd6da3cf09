"""The reconcile decision, pure: FineTuneJob + observed children + now -> what to do.

    spec invalid           -> Failed / InvalidSpec, no children
    cannot fit its GPUs    -> MemoryFits=False and a Warning (`preflight`); with
                              spec.strictPreflight, Failed before any pod starts
    spec.search            -> a hyperparameter search: trial Jobs instead of attempts (`search`)
    no attempt yet         -> attempt 0: RBAC, ConfigMap and Job (+ headless Service)
    spec.suspend           -> delete the running Job (checkpoints stay), Suspended
    current attempt        -> observe its Job and pods: Queued (Kueue: `admission`), Pending
                              (timeout?), Running, Succeeded, or Failed -> `retry.decide_retry`
                              -> next attempt or Failed (a Kueue eviction: its Job is deleted)
The plan lists objects to apply, Jobs to delete, the operator's share of the status and the
Events to post. It reads no clock and no API: `reconcile` passes `now` and the observed
snapshots, and carries the plan out. Same inputs, same plan, so a restart never duplicates.
How an attempt ends is `attempts`; a search's trials are `search`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubetune_api.errors import ConfigError
from kubetune_api.status import Attempt, FineTuneJobStatus
from kubetune_operator.finetune.admission import admitted, queued_status
from kubetune_operator.finetune.attempts import fail, failed_attempt, succeeded
from kubetune_operator.finetune.build.children import build_children
from kubetune_operator.finetune.failure import Failure
from kubetune_operator.finetune.observe import PENDING_REASONS, Observation, observe_attempt
from kubetune_operator.finetune.plan_types import (
    Context,
    Observed,
    Plan,
    new_attempt,
    pending_left,
    started_message,
)
from kubetune_operator.finetune.preflight import CONDITION as MEMORY_CONDITION
from kubetune_operator.finetune.preflight import MemoryCheck, check_memory
from kubetune_operator.finetune.queue import with_queue
from kubetune_operator.finetune.search import plan_search
from kubetune_operator.finetune.validation import parse_spec
from kubetune_operator.owner import Owner
from kubetune_operator.settings import Settings
from kubetune_operator.status import (
    Event,
    condition,
    parse_status,
    set_condition,
    shorten,
    suspended_conditions,
    timestamp,
)

__all__ = ["Event", "Observed", "Plan", "plan_reconcile"]
Json = dict[str, Any]
TERMINAL = ("Succeeded", "Failed")


def plan_reconcile(
    body: Json, observed: Observed, settings: Settings, now: datetime, *, full: bool = False
) -> Plan:
    """The plan for one FineTuneJob; `full` re-applies every child (create, resume, update)."""
    status = parse_status(body.get("status"))
    generation = body.get("metadata", {}).get("generation")
    try:
        spec = with_queue(parse_spec(body.get("spec")), body)
    except ConfigError as err:
        return _invalid(status, err, now, generation)
    status = status.model_copy(update={"observed_generation": generation})
    if status.phase in TERMINAL:
        return Plan(status)
    ctx = Context(Owner.of(body), spec, observed, settings, now, generation, full)
    attempts = list(status.attempts or [])
    check = check_memory(spec, dict(attempts[-1].changes or {}) if attempts else {}, settings)
    if check and check.fits is False and spec.strict_preflight and not (attempts or status.trials):
        return _refused(status, check, now, generation)
    return _with_memory_check(_plan(ctx, status, attempts), status, check, now)


def _plan(ctx: Context, status: FineTuneJobStatus, attempts: list[Attempt]) -> Plan:
    if ctx.spec.search is not None:
        return plan_search(ctx, status)
    if not attempts or attempts[-1].result == "Suspended":
        return _start_or_stay_suspended(ctx, status, attempts)
    if ctx.spec.suspend:
        return _suspend(ctx, status, attempts)
    return _follow(ctx, status, attempts)


def _refused(
    status: FineTuneJobStatus, check: MemoryCheck, now: datetime, generation: int | None
) -> Plan:
    """spec.strictPreflight: the job cannot fit its GPUs, so it fails before any pod starts."""
    conditions = set_condition(
        list(status.conditions or []), MEMORY_CONDITION, False, check.reason, check.message, now
    )
    conditions = set_condition(conditions, "Failed", True, check.reason, check.message, now)
    new = status.model_copy(
        update={
            "phase": "Failed",
            "conditions": conditions,
            "message": shorten(f"{check.reason}: {check.message} (spec.strictPreflight)"),
            "completion_time": timestamp(now),
        }
    )
    return Plan(new, events=[Event("Warning", check.reason, shorten(check.message, 1000))])


def _with_memory_check(
    plan: Plan, old: FineTuneJobStatus, check: MemoryCheck | None, now: datetime
) -> Plan:
    """The plan with the MemoryFits condition; a Warning Event when it newly does not fit."""
    if check is None:
        return plan
    conditions = set_condition(
        list(plan.status.conditions or []),
        MEMORY_CONDITION,
        check.fits,
        check.reason,
        check.message,
        now,
    )
    plan.status = plan.status.model_copy(update={"conditions": conditions})
    before = condition(old, MEMORY_CONDITION)
    if check.fits is False and (before is None or before.reason != check.reason):
        plan.events.append(Event("Warning", check.reason, shorten(check.message, 1000)))
    return plan


def _invalid(
    status: FineTuneJobStatus, err: ConfigError, now: datetime, generation: int | None
) -> Plan:
    message = "; ".join(err.problems)
    done = status.phase == "Failed" and status.message == shorten(f"InvalidSpec: {message}")
    conditions = set_condition(
        list(status.conditions or []), "Failed", True, "InvalidSpec", message, now, generation
    )
    new = status.model_copy(
        update={
            "phase": "Failed",
            "conditions": conditions,
            "message": shorten(f"InvalidSpec: {message}"),
            "completion_time": status.completion_time or timestamp(now),
            "observed_generation": generation,
        }
    )
    events = [] if done else [Event("Warning", "InvalidSpec", message)]
    return Plan(new, events=events)


def _start_or_stay_suspended(
    ctx: Context, status: FineTuneJobStatus, attempts: list[Attempt]
) -> Plan:
    if ctx.spec.suspend:
        return _suspended_plan(ctx, status, attempts, [])
    previous = attempts[-1] if attempts else None
    reason = "resumed after suspend" if previous else None
    attempt = new_attempt(
        ctx, len(attempts), dict(previous.changes or {}) if previous else {}, reason
    )
    conditions = list(status.conditions or [])
    if previous is not None:
        conditions = set_condition(conditions, "Suspended", False, "Resumed", "", ctx.now)
    new = status.model_copy(
        update={
            "attempts": [*attempts, attempt],
            "phase": "Pending",
            "conditions": conditions,
            "start_time": status.start_time or timestamp(ctx.now),
            "message": f"Starting attempt {attempt.index} (job {attempt.job_name})",
        }
    )
    events = [Event("Normal", "AttemptStarted", started_message(attempt))]
    return Plan(new, build_children(ctx.owner, ctx.spec, attempt, ctx.settings), [], events)


def _suspended_plan(
    ctx: Context, status: FineTuneJobStatus, attempts: list[Attempt], delete: list[str]
) -> Plan:
    conditions = suspended_conditions(status, ctx.now)
    new = status.model_copy(
        update={
            "attempts": attempts or None,
            "phase": "Suspended",
            "conditions": conditions,
            "message": "Suspended: the trainer is stopped; checkpoints are kept",
        }
    )
    events = (
        [] if status.phase == "Suspended" else [Event("Normal", "Suspended", new.message or "")]
    )
    return Plan(new, delete_jobs=delete, events=events)


def _suspend(ctx: Context, status: FineTuneJobStatus, attempts: list[Attempt]) -> Plan:
    current = attempts[-1].model_copy(
        update={"result": "Suspended", "completion_time": timestamp(ctx.now)}
    )
    return _suspended_plan(ctx, status, [*attempts[:-1], current], [current.job_name])


def _observe(ctx: Context, attempt: Attempt) -> tuple[Observation, Json | None]:
    job = next((j for j in ctx.observed.jobs if j["attempt"] == attempt.index), None)
    pods = [p for p in ctx.observed.pods if p["attempt"] == attempt.index]
    return observe_attempt(job, pods, ctx.spec.resources.nodes, ctx.observed.workload(job)), job


def _follow(ctx: Context, status: FineTuneJobStatus, attempts: list[Attempt]) -> Plan:
    obs, job = _observe(ctx, attempts[-1])
    status, events = admitted(ctx, status, attempts, obs, ctx.observed.workload(job))
    plan = _follow_state(ctx, status, attempts, obs, job)
    plan.events = events + plan.events
    return plan


def _follow_state(
    ctx: Context,
    status: FineTuneJobStatus,
    attempts: list[Attempt],
    obs: Observation,
    job: Json | None,
) -> Plan:
    current = attempts[-1]
    if obs.state == "Succeeded":
        return succeeded(ctx, status, attempts)
    if obs.state == "Failed":
        assert obs.failure is not None
        delete = [current.job_name] if obs.evicted else []  # else Kueue would admit it again
        return failed_attempt(ctx, status, attempts, obs.failure, delete)
    if obs.state == "Queued":
        queued, events = queued_status(ctx, status, attempts, obs)
        return Plan(queued, _missing_children(ctx, current, job), events=events)
    if obs.state in ("Pending", "Missing") and _pending_too_long(ctx, current):
        failure = Failure(
            obs.reason if obs.reason in PENDING_REASONS else "PendingTimeout",
            _timeout_message(ctx, obs),
        )
        return fail(ctx, status, attempts, failure, "", delete=[current.job_name])
    plan = Plan(_progressing(ctx, status, attempts, obs))
    plan.apply = _missing_children(ctx, current, job)
    plan.events = _transition_events(status, plan.status, obs)
    if obs.state in ("Pending", "Missing"):
        plan.requeue_after = pending_left(ctx, current.start_time)
    return plan


def _missing_children(ctx: Context, current: Attempt, job: Json | None) -> list[Json]:
    """Every child again on a full reconcile (the Job only when it is gone: never re-applied,
    so Kueue's unsuspend and its scheduling changes stay)."""
    if job is not None and not ctx.full:
        return []
    children = build_children(ctx.owner, ctx.spec, current, ctx.settings)
    return [c for c in children if job is None or c["kind"] != "Job"]


def _pending_too_long(ctx: Context, attempt: Attempt) -> bool:
    left = pending_left(ctx, attempt.start_time)
    return left is not None and left < 0


def _timeout_message(ctx: Context, obs: Observation) -> str:
    why = f"{obs.reason}: {obs.message}" if obs.message else obs.reason
    return f"pod still pending after spec.pendingTimeoutSeconds={ctx.spec.pending_timeout_seconds} ({why})"


def _progressing(
    ctx: Context, status: FineTuneJobStatus, attempts: list[Attempt], obs: Observation
) -> FineTuneJobStatus:
    current = attempts[-1]
    retrying = len(attempts) > 1 and attempts[-2].result not in (None, "Suspended")
    phase = "Running" if obs.state == "Running" else ("Retrying" if retrying else "Pending")
    conditions = list(status.conditions or [])
    if obs.state in ("Pending", "Running"):
        sched_reason = (
            "Scheduled"
            if obs.scheduled
            else (obs.reason if obs.reason == "Unschedulable" else "Waiting")
        )
        conditions = set_condition(
            conditions,
            "Scheduled",
            obs.scheduled,
            sched_reason,
            "" if obs.scheduled else obs.message,
            ctx.now,
        )
        conditions = set_condition(
            conditions, "Running", obs.state == "Running", obs.reason, obs.message, ctx.now
        )
    if obs.state == "Running":
        message = f"Running attempt {current.index} (job {current.job_name})"
    else:
        detail = f"{obs.reason}: {obs.message}" if obs.message else obs.reason
        message = f"Waiting for attempt {current.index} (job {current.job_name}): {detail}"
    return status.model_copy(
        update={"phase": phase, "conditions": conditions, "message": shorten(message)}
    )


def _transition_events(
    old: FineTuneJobStatus, new: FineTuneJobStatus, obs: Observation
) -> list[Event]:
    events = []
    if new.phase != old.phase and new.phase == "Running":
        events.append(Event("Normal", "Running", new.message or ""))
    old_reason = next((c.reason for c in old.conditions or [] if c.type == "Running"), None)
    if obs.state == "Pending" and obs.reason in PENDING_REASONS and obs.reason != old_reason:
        events.append(Event("Warning", obs.reason, obs.message or obs.reason))
    return events
