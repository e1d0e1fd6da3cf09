"""The reconcile decision, pure: FineTuneJob + observed children + now -> what to do.

    spec invalid           -> Failed / InvalidSpec, no children
    no attempt yet         -> attempt 0: RBAC, ConfigMap and Job (+ headless Service)
    spec.suspend           -> delete the running Job (checkpoints stay), Suspended
    current attempt        -> observe its Job and pods: Pending (timeout?), Running, Succeeded,
                              or Failed -> `retry.decide_retry` -> next attempt or Failed
The plan lists objects to apply, Jobs to delete, the operator's share of the status and the
Events to post. It reads no clock and no API: `reconcile` passes `now` and the observed
snapshots, and carries the plan out. Same inputs, same plan, so a restart never duplicates.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from kubetune_api.errors import ConfigError
from kubetune_api.finetune import FineTuneJobSpec
from kubetune_api.status import Attempt, FineTuneJobStatus, OutputStatus
from kubetune_operator import names
from kubetune_operator.config import build_config_map
from kubetune_operator.job import build_job, build_service
from kubetune_operator.observe import Observation, observe_attempt
from kubetune_operator.owner import Owner
from kubetune_operator.rbac import build_role, build_role_binding, build_service_account
from kubetune_operator.retry import Failure, decide_retry
from kubetune_operator.settings import Settings
from kubetune_operator.status import parse_status, parse_time, set_condition, shorten, timestamp
from kubetune_operator.validation import parse_spec

Json = dict[str, Any]
TERMINAL = ("Succeeded", "Failed")
PENDING_REASONS = ("Unschedulable", "ImagePullBackOff", "ErrImagePull", "InvalidImageName")


@dataclass(frozen=True)
class Observed:
    """Snapshots (see `observe`) of this FineTuneJob's Jobs and pods."""

    jobs: list[Json] = field(default_factory=list)
    pods: list[Json] = field(default_factory=list)


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Plan:
    """What one reconcile does; `status` is the operator's share of the desired status."""

    status: FineTuneJobStatus
    apply: list[Json] = field(default_factory=list)
    delete_jobs: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None  # seconds until a deadline (pendingTimeoutSeconds) passes


@dataclass
class Context:
    """Inputs of one plan, shared by the steps below."""

    owner: Owner
    spec: FineTuneJobSpec
    observed: Observed
    settings: Settings
    now: datetime
    generation: int | None
    full: bool


def build_children(
    owner: Owner, spec: FineTuneJobSpec, attempt: Attempt, settings: Settings
) -> list[Json]:
    """Every child of one attempt, in apply order (RBAC and config before the Job)."""
    config_map = build_config_map(owner, spec, attempt.index, attempt.changes)
    digest = hashlib.sha256(config_map["data"]["config.yaml"].encode()).hexdigest()[:16]
    objects = [build_service_account(owner), build_role(owner), build_role_binding(owner)]
    if spec.resources.nodes > 1:
        objects.append(build_service(owner, settings))
    objects.append(config_map)
    objects.append(build_job(owner, spec, attempt.index, settings, digest))
    return objects


def plan_reconcile(
    body: Json, observed: Observed, settings: Settings, now: datetime, *, full: bool = False
) -> Plan:
    """The plan for one FineTuneJob; `full` re-applies every child (create, resume, update)."""
    status = parse_status(body.get("status"))
    generation = body.get("metadata", {}).get("generation")
    try:
        spec = parse_spec(body.get("spec"))
    except ConfigError as err:
        return _invalid(status, err, now, generation)
    status = status.model_copy(update={"observed_generation": generation})
    if status.phase in TERMINAL:
        return Plan(status)
    ctx = Context(Owner.of(body), spec, observed, settings, now, generation, full)
    attempts = list(status.attempts or [])
    if not attempts or attempts[-1].result == "Suspended":
        return _start_or_stay_suspended(ctx, status, attempts)
    if spec.suspend:
        return _suspend(ctx, status, attempts)
    return _follow(ctx, status, attempts)


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


def _new_attempt(ctx: Context, index: int, changes: dict[str, str], reason: str | None) -> Attempt:
    return Attempt(
        index=index,
        job_name=names.job_name(ctx.owner.name, index),
        start_time=timestamp(ctx.now),
        changes=changes or None,
        reason=reason,
    )


def _start_or_stay_suspended(
    ctx: Context, status: FineTuneJobStatus, attempts: list[Attempt]
) -> Plan:
    if ctx.spec.suspend:
        return _suspended_plan(ctx, status, attempts, [])
    previous = attempts[-1] if attempts else None
    reason = "resumed after suspend" if previous else None
    attempt = _new_attempt(
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
    events = [Event("Normal", "AttemptStarted", _started_message(attempt))]
    return Plan(new, build_children(ctx.owner, ctx.spec, attempt, ctx.settings), [], events)


def _started_message(attempt: Attempt) -> str:
    text = f"Started attempt {attempt.index}: job {attempt.job_name}"
    return f"{text} ({attempt.reason})" if attempt.reason else text


def _suspended_plan(
    ctx: Context, status: FineTuneJobStatus, attempts: list[Attempt], delete: list[str]
) -> Plan:
    conditions = set_condition(
        list(status.conditions or []),
        "Suspended",
        True,
        "Suspended",
        "spec.suspend is true",
        ctx.now,
    )
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
    return observe_attempt(job, pods, ctx.spec.resources.nodes), job


def _follow(ctx: Context, status: FineTuneJobStatus, attempts: list[Attempt]) -> Plan:
    current = attempts[-1]
    obs, job = _observe(ctx, current)
    if obs.state == "Succeeded":
        return _succeeded(ctx, status, attempts)
    if obs.state == "Failed":
        assert obs.failure is not None
        return _failed_attempt(ctx, status, attempts, obs.failure)
    if obs.state in ("Pending", "Missing") and _pending_too_long(ctx, current):
        failure = Failure(
            obs.reason if obs.reason in PENDING_REASONS else "PendingTimeout",
            _timeout_message(ctx, obs),
        )
        return _fail(ctx, status, attempts, failure, "", delete=[current.job_name])
    plan = Plan(_progressing(ctx, status, attempts, obs))
    if job is None or ctx.full:
        children = build_children(ctx.owner, ctx.spec, current, ctx.settings)
        plan.apply = [c for c in children if job is None or c["kind"] != "Job"]
    plan.events = _transition_events(status, plan.status, obs)
    if obs.state in ("Pending", "Missing"):
        plan.requeue_after = _pending_left(ctx, current)
    return plan


def _pending_left(ctx: Context, attempt: Attempt) -> float | None:
    """Seconds until spec.pendingTimeoutSeconds runs out for this attempt (None: no limit)."""
    limit = ctx.spec.pending_timeout_seconds
    started = parse_time(attempt.start_time)
    if not limit or started is None:
        return None
    return limit - (ctx.now - started).total_seconds()


def _pending_too_long(ctx: Context, attempt: Attempt) -> bool:
    left = _pending_left(ctx, attempt)
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


def _succeeded(ctx: Context, status: FineTuneJobStatus, attempts: list[Attempt]) -> Plan:
    current = attempts[-1].model_copy(
        update={"result": "Succeeded", "completion_time": timestamp(ctx.now)}
    )
    step = status.progress.step if status.progress else None
    output = OutputStatus(
        adapter_path=adapter_location(ctx.spec, ctx.owner.name), checkpoint_step=step
    )
    conditions = set_condition(
        list(status.conditions or []), "Complete", True, "Succeeded", "", ctx.now
    )
    conditions = set_condition(conditions, "Running", False, "Completed", "", ctx.now)
    new = status.model_copy(
        update={
            "phase": "Succeeded",
            "attempts": [*attempts[:-1], current],
            "conditions": conditions,
            "output": output,
            "completion_time": timestamp(ctx.now),
            "message": f"Succeeded: adapter at {output.adapter_path}",
        }
    )
    return Plan(new, events=[Event("Normal", "Succeeded", new.message or "")])


def adapter_location(spec: FineTuneJobSpec, name: str) -> str:
    """Where the adapter is, as a reference that means something outside the pod."""
    out = spec.output
    if out.pvc is not None:
        sub = (out.pvc.path or name).strip("/")
        return f"pvc://{out.pvc.claim_name}/{sub}/adapter"
    return f"{(out.uri or '').rstrip('/')}/adapter"


def _failed_attempt(
    ctx: Context, status: FineTuneJobStatus, attempts: list[Attempt], failure: Failure
) -> Plan:
    current = attempts[-1]
    failed = 1 + sum(1 for a in attempts[:-1] if a.result not in (None, "Suspended", "Succeeded"))
    decision = decide_retry(ctx.spec, failure, dict(current.changes or {}), failed)
    if not decision.retry:
        return _fail(ctx, status, attempts, failure, decision.note)
    ended = _ended(current, failure, ctx.now)
    note = f"{failure.reason} on attempt {current.index}: {decision.note}"
    nxt = _new_attempt(ctx, current.index + 1, decision.overrides, note)
    conditions = set_condition(
        list(status.conditions or []),
        "AttemptFailed",
        True,
        failure.reason,
        failure.message,
        ctx.now,
    )
    new = status.model_copy(
        update={
            "phase": "Retrying",
            "attempts": [*attempts[:-1], ended, nxt],
            "conditions": conditions,
            "output": _checkpoint_output(status, failure),
            "message": shorten(f"Retrying: {note}"),
        }
    )
    events = [
        Event("Warning", failure.reason, _attempt_failed(current, failure)),
        Event("Normal", "AttemptStarted", _started_message(nxt)),
    ]
    return Plan(new, build_children(ctx.owner, ctx.spec, nxt, ctx.settings), [], events)


def _ended(attempt: Attempt, failure: Failure, now: datetime) -> Attempt:
    return attempt.model_copy(
        update={
            "result": failure.reason,
            "message": shorten(failure.message, 512) or None,
            "completion_time": timestamp(now),
        }
    )


def _checkpoint_output(status: FineTuneJobStatus, failure: Failure) -> OutputStatus | None:
    """The last checkpoint's step, read from its folder name (`.../step-000040`)."""
    tail = (failure.checkpoint or "").rstrip("/").rsplit("/", 1)[-1]
    if not tail.startswith("step-") or not tail[5:].isdigit():
        return status.output
    return OutputStatus(
        adapter_path=status.output.adapter_path if status.output else None,
        checkpoint_step=int(tail[5:]),
    )


def _fail(
    ctx: Context,
    status: FineTuneJobStatus,
    attempts: list[Attempt],
    failure: Failure,
    note: str,
    delete: list[str] | None = None,
) -> Plan:
    message = f"{failure.reason}: {failure.message}" + (f" ({note})" if note else "")
    conditions = set_condition(
        list(status.conditions or []), "Failed", True, failure.reason, message, ctx.now
    )
    conditions = set_condition(conditions, "Running", False, failure.reason, "", ctx.now)
    new = status.model_copy(
        update={
            "phase": "Failed",
            "attempts": [*attempts[:-1], _ended(attempts[-1], failure, ctx.now)],
            "conditions": conditions,
            "output": _checkpoint_output(status, failure),
            "completion_time": timestamp(ctx.now),
            "message": shorten(f"Failed: {message}"),
        }
    )
    events = [
        Event("Warning", failure.reason, _attempt_failed(attempts[-1], failure)),
        Event("Warning", "Failed", shorten(message, 1000)),
    ]
    return Plan(new, delete_jobs=delete or [], events=events)


def _attempt_failed(attempt: Attempt, failure: Failure) -> str:
    return f"Attempt {attempt.index} failed: {shorten(failure.message, 512)}"
