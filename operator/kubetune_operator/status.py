"""Status arithmetic: conditions that keep their transition time, the minimal status patch, Events.

The operator owns phase, conditions, attempts, trials, output, startTime, completionTime,
observedGeneration and message; the trainer owns progress and metrics (except in a search,
whose trial pods report nothing: there the operator writes them too). `status_patch` compares
only the operator's keys, so a reconcile never overwrites what the trainer reported and patches
nothing when nothing changed. `Event` is what a plan (either kind's) asks `runner` to post.
Pure; called by `finetune.plan` and its steps, `finetune.reconcile`, `serving.status` and `runner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from kubetune_api.status import Condition, FineTuneJobStatus

OWNED_KEYS = (
    "phase",
    "conditions",
    "attempts",
    "output",
    "startTime",
    "completionTime",
    "observedGeneration",
    "message",
    "trials",
    "bestTrial",
)
MAX_MESSAGE = 1024


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event a plan asks for; `runner` posts it on the object it reconciled."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def timestamp(now: datetime) -> str:
    """RFC 3339 in UTC, second precision, as Kubernetes writes times."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def shorten(text: str, limit: int = MAX_MESSAGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_status(raw: Any) -> FineTuneJobStatus:
    """The current status; fields that do not parse (an older operator's) are dropped."""
    data = dict(raw) if isinstance(raw, dict) else {}
    try:
        return FineTuneJobStatus.model_validate(data)
    except ValidationError as err:
        bad = {str(e["loc"][0]) for e in err.errors() if e.get("loc")}
        return FineTuneJobStatus.model_validate({k: v for k, v in data.items() if k not in bad})


def set_condition(
    conditions: list[Condition],
    kind: str,
    status: bool | None,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> list[Condition]:
    """Conditions with `kind` set (None: Unknown); lastTransitionTime changes only when the
    status flips."""
    value: Literal["True", "False", "Unknown"] = (
        "Unknown" if status is None else ("True" if status else "False")
    )
    old = next((c for c in conditions if c.type == kind), None)
    since = old.last_transition_time if old is not None and old.status == value else None
    new = Condition(
        type=kind,
        status=value,
        reason=reason,
        message=shorten(message) if message else None,
        last_transition_time=since or timestamp(now),
        observed_generation=generation,
    )
    return (
        [c for c in conditions if c.type != kind] + [new]
        if old is None
        else [new if c.type == kind else c for c in conditions]
    )


def suspended_conditions(status: FineTuneJobStatus, now: datetime) -> list[Condition]:
    """The conditions of a job that spec.suspend stopped (attempts or search trials alike)."""
    return set_condition(
        list(status.conditions or []), "Suspended", True, "Suspended", "spec.suspend is true", now
    )


def condition(status: FineTuneJobStatus, kind: str) -> Condition | None:
    return next((c for c in status.conditions or [] if c.type == kind), None)


def status_patch(
    current: Any, desired: FineTuneJobStatus, extra_keys: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A JSON merge patch of the operator's status keys (and `extra_keys`: a search owns
    progress and metrics too); {} when nothing changed."""
    have = current if isinstance(current, dict) else {}
    want = desired.to_wire()
    patch: dict[str, Any] = {}
    for key in dict.fromkeys((*OWNED_KEYS, *extra_keys)):
        if want.get(key) != have.get(key):
            patch[key] = want.get(key)
    return patch
