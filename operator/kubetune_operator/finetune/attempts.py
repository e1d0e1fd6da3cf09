"""How an attempt ends: success, a retry with changed settings, or the job's failure. Pure.

Each function takes the plan's inputs and returns the Plan for that ending: the status (attempts
closed with their result, conditions, output), the next attempt's children when retrying, and
the Events. `rejected` turns a plan whose child the API server refused (400/422) into the
job's failure, reason Rejected, with the API server's message (for `reconcile`).
Called by `plan` (a spec.search job's trials end in `search` instead).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubetune_api.status import Attempt, FineTuneJobStatus, OutputStatus
from kubetune_api.termination import PREEMPTED
from kubetune_operator.finetune.build.children import build_children
from kubetune_operator.finetune.build.mounts import adapter_location
from kubetune_operator.finetune.failure import Failure
from kubetune_operator.finetune.observe import succeeded_line
from kubetune_operator.finetune.plan_types import Context, Plan, new_attempt, started_message
from kubetune_operator.finetune.retry import count_endings, decide_retry
from kubetune_operator.status import Event, set_condition, shorten, timestamp


def succeeded(ctx: Context, status: FineTuneJobStatus, attempts: list[Attempt]) -> Plan:
    current = attempts[-1].model_copy(
        update={"result": "Succeeded", "completion_time": timestamp(ctx.now)}
    )
    step = status.progress.step if status.progress else None
    output = succeeded_output(ctx, attempts[-1].index, step)
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


def succeeded_output(ctx: Context, attempt: int, step: int | None) -> OutputStatus:
    """Where the adapter is: the trainer's `Succeeded` line names it (an s3:// URI only once
    uploaded, with its size and hash); without one, where the spec puts it."""
    line = succeeded_line([p for p in ctx.observed.pods if p["attempt"] == attempt])
    where = adapter_location(ctx.spec, ctx.owner.name)
    if line is not None and line.adapterUri and where.startswith("s3://"):
        where = line.adapterUri
    return OutputStatus(
        adapter_path=where,
        adapter_bytes=line.adapterBytes if line else None,
        adapter_sha256=line.adapterSha256 if line else None,
        checkpoint_step=step,
    )


def failed_attempt(
    ctx: Context,
    status: FineTuneJobStatus,
    attempts: list[Attempt],
    failure: Failure,
    delete: list[str] | None = None,
) -> Plan:
    """The next attempt, or the job's failure; `delete`: Jobs to delete either way (one Kueue
    evicted: left suspended, Kueue would admit it again)."""
    current = attempts[-1]
    failed, disruptions = count_endings([a.result for a in attempts[:-1]], failure.reason)
    decision = decide_retry(ctx.spec, failure, dict(current.changes or {}), failed, disruptions)
    if not decision.retry:
        return fail(ctx, status, attempts, failure, decision.note, delete)
    ended = _ended(current, failure, ctx.now)
    note = f"{failure.reason} on attempt {current.index}: {decision.note}"
    nxt = new_attempt(ctx, current.index + 1, decision.overrides, note)
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
        Event("Normal", "AttemptStarted", started_message(nxt)),
    ]
    return Plan(new, build_children(ctx.owner, ctx.spec, nxt, ctx.settings), delete or [], events)


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


def fail(
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
    ended = "was disrupted" if failure.reason == PREEMPTED else "failed"
    return f"Attempt {attempt.index} {ended}: {shorten(failure.message, 512)}"


def rejected(plan: Plan, obj: dict[str, Any], message: str, now: datetime) -> Plan:
    """`plan` after the API server refused its child `obj`: Failed, reason Rejected, nothing
    applied; the current attempt ends Rejected (it is never retried: the same object would be
    refused again)."""
    what = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
    text = shorten(f"Rejected: the API server refused {what}: {message}")
    attempts = list(plan.status.attempts or [])
    if attempts:
        ended = {
            "result": "Rejected",
            "message": shorten(message, 512),
            "completion_time": timestamp(now),
        }
        attempts[-1] = attempts[-1].model_copy(update=ended)
    conditions = set_condition(
        list(plan.status.conditions or []), "Failed", True, "Rejected", text, now
    )
    status = plan.status.model_copy(
        update={
            "phase": "Failed",
            "attempts": attempts or None,
            "conditions": conditions,
            "completion_time": timestamp(now),
            "message": text,
        }
    )
    return Plan(status, events=[Event("Warning", "Rejected", shorten(text, 1000))])
