"""kopf registrations of the FineTuneJob operator: what wakes its runner.

- a FineTuneJob is created, changed or found at startup: a full reconcile (every child applied);
- a Job or pod labelled `kubetune.io/finetunejob` changes: a reconcile after a short debounce;
- a Kueue Workload of one of those Jobs changes (admitted, evicted, its pending reason): the
  same debounced reconcile; Workloads are indexed by (namespace, Job name) and mapped back to
  their FineTuneJob through the Jobs' own index. Without Kueue's CRDs kopf skips them;
- every FineTuneJob watch event feeds the runner's body cache and the phase metrics.
Children are indexed in memory (kopf indexes), so a reconcile reads only its FineTuneJob from
the API. Handlers never return values (kopf would store them in `status`). Registered at import
(kopf's default registry), as kopf's examples do; `cli` fills `PARTS` before kopf starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from logging import Logger, LoggerAdapter
from typing import Any

import kopf

from kubetune_operator import names
from kubetune_operator.finetune.observe import job_snapshot, pod_snapshot
from kubetune_operator.finetune.plan_types import Indexes
from kubetune_operator.finetune.queue import GROUP as KUEUE
from kubetune_operator.finetune.queue import PLURAL as WORKLOADS
from kubetune_operator.finetune.queue import VERSION as KUEUE_VERSION
from kubetune_operator.finetune.queue import owner_job, workload_snapshot
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.runner import Runner
from kubetune_operator.state import Slot

FTJ = (names.GROUP, "v1alpha1", names.PLURAL)
CHILDREN: dict[str, Any] = {
    names.LABEL_FTJ: kopf.PRESENT,
    names.LABEL_MANAGED_BY: names.FIELD_MANAGER,
}
CHILD_DEBOUNCE = 0.25  # seconds: one reconcile per burst of Job/pod events


@dataclass(frozen=True)
class Parts:
    """What these handlers use: the FineTuneJob runner and the operator's metrics."""

    runner: Runner[Indexes]
    metrics: OperatorMetrics


PARTS: Slot[Parts] = Slot("the FineTuneJob handlers")


def _owner_key(namespace: str | None, annotations: Mapping[str, str]) -> tuple[str, str] | None:
    name = annotations.get(names.ANNOTATION_FTJ)
    return (namespace, name) if namespace and name else None


def _indexes(kwargs: Mapping[str, Any]) -> Indexes:
    return Indexes(kwargs["ftj_jobs"], kwargs["ftj_pods"], kwargs.get("ftj_workloads", {}))


@kopf.index("batch", "v1", "jobs", id="ftj_jobs", labels=CHILDREN)
async def ftj_jobs(
    *, namespace: str | None, annotations: Mapping[str, str], body: kopf.Body, **_: Any
) -> Any:
    key = _owner_key(namespace, annotations)
    return {key: job_snapshot(dict(body))} if key else None


@kopf.index("batch", "v1", "jobs", id="ftj_job_owners", labels=CHILDREN)
async def ftj_job_owners(
    *, namespace: str | None, name: str, annotations: Mapping[str, str], **_: Any
) -> Any:
    key = _owner_key(namespace, annotations)
    return {(namespace, name): key} if key else None


@kopf.index(KUEUE, KUEUE_VERSION, WORKLOADS, id="ftj_workloads")
async def ftj_workloads(*, namespace: str | None, body: kopf.Body, **_: Any) -> Any:
    job = owner_job(dict(body))
    return {(namespace, job): workload_snapshot(dict(body))} if job else None


@kopf.on.event(KUEUE, KUEUE_VERSION, WORKLOADS, id="workload")
async def workload_changed(
    *,
    namespace: str | None,
    body: kopf.Body,
    logger: Logger | LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    job, owners = owner_job(dict(body)), kwargs["ftj_job_owners"]
    runner = PARTS.get().runner
    for key in list(owners.get((namespace, job), [])) if job else []:  # awaits change it
        await runner.handle(
            key, _indexes(kwargs), trigger="workload", delay=CHILD_DEBOUNCE, logger=logger
        )


@kopf.index("", "v1", "pods", id="ftj_pods", labels=CHILDREN)
async def ftj_pods(
    *, namespace: str | None, annotations: Mapping[str, str], body: kopf.Body, **_: Any
) -> Any:
    key = _owner_key(namespace, annotations)
    return {key: pod_snapshot(dict(body))} if key else None


@kopf.on.create(*FTJ, id="reconcile")
@kopf.on.update(*FTJ, id="reconcile")
@kopf.on.resume(*FTJ, id="reconcile")
async def spec_changed(
    *, namespace: str | None, name: str, reason: str, body: kopf.Body, **kwargs: Any
) -> None:
    key, runner = (namespace or "", name), PARTS.get().runner
    runner.observe(key, dict(body))
    await runner.handle(key, _indexes(kwargs), full=True, trigger=reason)


@kopf.on.event("batch", "v1", "jobs", id="job", labels=CHILDREN)
@kopf.on.event("", "v1", "pods", id="pod", labels=CHILDREN)
async def child_changed(
    *,
    namespace: str | None,
    annotations: Mapping[str, str],
    logger: Logger | LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    key = _owner_key(namespace, annotations)
    if key is not None:
        runner = PARTS.get().runner
        await runner.handle(
            key, _indexes(kwargs), trigger="child", delay=CHILD_DEBOUNCE, logger=logger
        )


@kopf.on.event(*FTJ, id="phase")
async def track(
    *, type: str, namespace: str | None, name: str, status: kopf.Status, body: kopf.Body, **_: Any
) -> None:
    parts, key, deleted = PARTS.get(), (namespace or "", name), type == "DELETED"
    parts.metrics.observe_phase(key, status.get("phase"), deleted=deleted)
    parts.runner.observe(key, dict(body), deleted=deleted)


@kopf.on.probe(id="finetunejobs")
async def tracked(**_: Any) -> int:
    return len(PARTS.get().metrics.phases)  # probe results go to the health endpoint only


@kopf.on.cleanup(id="cleanup")
async def cleanup(**_: Any) -> None:
    PARTS.get().runner.close()
