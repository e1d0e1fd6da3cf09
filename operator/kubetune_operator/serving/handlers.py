"""kopf registrations of the ModelDeployment operator: what wakes the ModelDeployment runner.

- a ModelDeployment is created, changed or found at startup;
- a Deployment labelled `kubetune.io/modeldeployment` changes (rollout, readiness);
- a FineTuneJob changes: every ModelDeployment serving its adapter is reconciled, found
  through an in-memory kopf index (FineTuneJob -> ModelDeployments). Watching beats a timer:
  the roll to a new adapter starts within a second of the job's Succeeded status, and idle
  ModelDeployments cost nothing.
Handlers return nothing (kopf would write it into the status). Registered at import (kopf's
default registry), as kopf's examples do; `cli` fills `PARTS` with the runner before kopf starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import Logger, LoggerAdapter
from typing import Any

import kopf

from kubetune_operator import names as ftj_names
from kubetune_operator.runner import Runner
from kubetune_operator.serving import names
from kubetune_operator.state import Slot

MDEP = (ftj_names.GROUP, "v1alpha1", names.PLURAL)
FTJ = (ftj_names.GROUP, "v1alpha1", ftj_names.PLURAL)
CHILDREN: dict[str, Any] = {
    names.LABEL_MDEP: kopf.PRESENT,
    ftj_names.LABEL_MANAGED_BY: ftj_names.FIELD_MANAGER,
}
PARTS: Slot[Runner[None]] = Slot("the ModelDeployment handlers")


def jobs_of(spec: Mapping[str, Any]) -> list[str]:
    """FineTuneJob names a (possibly invalid) spec refers to; tolerant of any shape."""
    found = []
    for model in spec.get("models") or []:
        if not isinstance(model, dict):
            continue
        named = model.get("adapters")
        refs = [model.get("adapter"), *(named if isinstance(named, list) else [])]
        for adapter in refs:
            job = adapter.get("fineTuneJob") if isinstance(adapter, dict) else None
            if isinstance(job, str) and job:
                found.append(job)
    return sorted(set(found))


async def _run(key: tuple[str, str], logger: Logger | LoggerAdapter[Any] | None = None) -> None:
    await PARTS.get().handle(key, None, logger=logger)


@kopf.index(*MDEP, id="mdep_by_ftj")
async def mdep_by_ftj(*, namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> Any:
    return {(namespace, job): name for job in jobs_of(spec)} or None


@kopf.on.create(*MDEP, id="mdep")
@kopf.on.update(*MDEP, id="mdep")
@kopf.on.resume(*MDEP, id="mdep")
async def mdep_changed(*, namespace: str | None, name: str, **_: Any) -> None:
    await _run((namespace or "", name))


@kopf.on.delete(*MDEP, id="mdep-forget", optional=True)
async def mdep_deleted(*, namespace: str | None, name: str, **_: Any) -> None:
    PARTS.get().forget((namespace or "", name))


@kopf.on.event("apps", "v1", "deployments", id="mdep-child", labels=CHILDREN)
async def child_changed(
    *,
    namespace: str | None,
    annotations: Mapping[str, str],
    logger: Logger | LoggerAdapter[Any],
    **_: Any,
) -> None:
    owner = annotations.get(names.ANNOTATION_MDEP)
    if namespace and owner:
        await _run((namespace, owner), logger)


@kopf.on.event(*FTJ, id="mdep-adapter")
async def job_changed(
    *, namespace: str | None, name: str, logger: Logger | LoggerAdapter[Any], **kwargs: Any
) -> None:
    index: kopf.Index[tuple[str | None, str], str] = kwargs["mdep_by_ftj"]
    for mdep in sorted(set(index.get((namespace, name), []))):
        await _run((namespace or "", mdep), logger)


@kopf.on.cleanup(id="mdep-cleanup")
async def cleanup(**_: Any) -> None:
    PARTS.get().close()
