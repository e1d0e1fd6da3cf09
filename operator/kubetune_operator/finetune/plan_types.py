"""The vocabulary of a FineTuneJob plan: observed children, the Plan, its inputs. Pure data.

Shared by `plan` (the decision), `attempts` (how an attempt ends) and `search` (trials);
`Indexes` is how `handlers` hand kopf's in-memory child indexes to `reconcile`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubetune_api.finetune import FineTuneJobSpec
from kubetune_api.status import Attempt, FineTuneJobStatus
from kubetune_operator import names
from kubetune_operator.owner import Owner
from kubetune_operator.settings import Settings
from kubetune_operator.status import Event, parse_time, timestamp

__all__ = ["Context", "Event", "Indexes", "Observed", "Plan", "new_attempt", "pending_left"]
Json = dict[str, Any]
Key = tuple[str, str]


@dataclass(frozen=True)
class Observed:
    """Snapshots (see `observe`, `queue`) of this FineTuneJob's Jobs, pods and Workloads."""

    jobs: list[Json] = field(default_factory=list)
    pods: list[Json] = field(default_factory=list)
    workloads: dict[str, Json] = field(default_factory=dict)  # Kueue's, by Job name (`queue`)

    def workload(self, job: Json | None) -> Json | None:
        return self.workloads.get(job["name"]) if job else None


@dataclass
class Indexes:
    """In-memory snapshots of children, keyed by (namespace, FineTuneJob name) (kopf indexes);
    Kueue's Workloads by (namespace, Job name)."""

    jobs: Mapping[Key, Iterable[Json]]
    pods: Mapping[Key, Iterable[Json]]
    workloads: Mapping[Key, Iterable[Json]] = field(default_factory=dict)  # by (ns, Job name)

    def observed(self, key: Key) -> Observed:
        jobs = list(self.jobs.get(key, []))
        workloads = {
            j["name"]: w for j in jobs for w in self.workloads.get((key[0], j["name"]), [])
        }
        return Observed(jobs, list(self.pods.get(key, [])), workloads)


@dataclass
class Plan:
    """What one reconcile does; `status` is the operator's share of the desired status."""

    status: FineTuneJobStatus
    apply: list[Json] = field(default_factory=list)
    delete_jobs: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None  # seconds until a deadline (pendingTimeoutSeconds) passes
    status_keys: tuple[str, ...] = ()  # status keys the operator writes besides its own (a search)


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


def pending_left(ctx: Context, start_time: str | None) -> float | None:
    """Seconds until spec.pendingTimeoutSeconds runs out for a Job created at `start_time`
    (an attempt's or a search trial's); None when there is no limit."""
    limit, started = ctx.spec.pending_timeout_seconds, parse_time(start_time)
    if not limit or started is None:
        return None
    return limit - (ctx.now - started).total_seconds()


def new_attempt(ctx: Context, index: int, changes: dict[str, str], reason: str | None) -> Attempt:
    return Attempt(
        index=index,
        job_name=names.job_name(ctx.owner.name, index),
        start_time=timestamp(ctx.now),
        changes=changes or None,
        reason=reason,
    )


def started_message(attempt: Attempt) -> str:
    text = f"Started attempt {attempt.index}: job {attempt.job_name}"
    return f"{text} ({attempt.reason})" if attempt.reason else text
