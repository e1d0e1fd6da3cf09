"""The ModelDeployment reconcile: read, build, server-side apply, prune, derive status, patch.

`ServingReconciler.reconcile(key)` runs for every trigger (spec change, a child Deployment
changed, a referenced FineTuneJob changed). Runs of one ModelDeployment are serialised and
coalesced (triggers during a run queue one follow-up run); the blocking API calls run on a
thread pool. The status of each Deployment comes from the answer to its apply, so a reconcile
makes no extra reads. Events are posted on phase transitions. I/O goes through `Kube` only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from kubetune_api.deployment import ModelDeploymentStatus
from kubetune_api.errors import ConfigError
from kubetune_operator import names as ftj_names
from kubetune_operator.kube import Kube, KubeError
from kubetune_operator.plan_types import Event
from kubetune_operator.serving import names
from kubetune_operator.serving.builders import MdepOwner, endpoint
from kubetune_operator.serving.plan import (
    build_children,
    carry_over,
    parse_spec,
    referenced_jobs,
    wanted_children,
)
from kubetune_operator.serving.status import (
    ModelState,
    derive_status,
    failed_status,
    parse_status,
    status_patch,
)
from kubetune_operator.settings import Settings

Key = tuple[str, str]
Json = dict[str, Any]
EventPoster = Callable[[Json, Event], None]
log = logging.getLogger("kubetune.operator.serving")
CHILD_KINDS = (("apps/v1", "deployments", "Deployment"), ("v1", "services", "Service"))


@dataclass
class _KeyState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: bool = False


def transition_event(old: ModelDeploymentStatus, new: ModelDeploymentStatus) -> Event | None:
    """An Event when the phase changes (Warning for Degraded and Failed)."""
    if new.phase is None or new.phase == old.phase:
        return None
    kind: Literal["Normal", "Warning"] = (
        "Warning" if new.phase in ("Degraded", "Failed") else "Normal"
    )
    ready = next((c for c in new.conditions or [] if c.type == "Ready"), None)
    reason = ready.reason if ready is not None and ready.reason else new.phase
    return Event(kind, reason, new.message or new.phase)


class ServingReconciler:
    """Carries out ModelDeployment reconciles against the API server."""

    def __init__(
        self, kube: Kube, settings: Settings, post_event: EventPoster, workers: int = 8
    ) -> None:
        self.kube, self.settings, self.post_event = kube, settings, post_event
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="serving")
        self.keys: dict[Key, _KeyState] = {}

    async def reconcile(self, key: Key) -> None:
        """Reconcile one ModelDeployment now, or once more after the run in progress."""
        state = self.keys.setdefault(key, _KeyState())
        if state.queued:
            return
        state.queued = True
        async with state.lock:
            state.queued = False
            loop = asyncio.get_running_loop()
            body, event = await loop.run_in_executor(self.executor, self.sync, key)
        if body is not None and event is not None:
            self.post_event(body, event)

    def forget(self, key: Key) -> None:
        self.keys.pop(key, None)

    def sync(self, key: Key) -> tuple[Json | None, Event | None]:
        """Blocking part: read, build, apply, prune, patch status; the body and an Event."""
        namespace, name = key
        body = self.kube.read_modeldeployment(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None, None
        current = parse_status(body.get("status"))
        generation = body["metadata"].get("generation")
        now = datetime.now(UTC)
        try:
            spec = parse_spec(body.get("spec"))
        except ConfigError as err:
            return self._finish(
                body, current, failed_status(current, err.problems, generation, now)
            )
        jobs = {j: self.kube.read_finetunejob(namespace, j) for j in referenced_jobs(spec)}
        children = build_children(MdepOwner.of(body), spec, jobs, self.settings)
        applied: dict[str, Json] = {}  # Deployment name -> as stored (status included)
        for obj in children.apply:
            try:
                answer = self.kube.apply(obj)
            except KubeError as err:
                if err.status not in (400, 422):  # others may pass: the handler retries
                    raise
                problem = f"the API server rejected {obj['kind']} {obj['metadata']['name']}: "
                failed = failed_status(
                    current, [problem + err.message], generation, now, "Rejected"
                )
                return self._finish(body, current, failed)
            if obj["kind"] == "Deployment":
                applied[obj["metadata"]["name"]] = answer
        existing = self._prune(namespace, name, wanted_children(children, spec, name))
        models = [_with_deployment(m, applied, name) for m in children.models]
        models = carry_over(models, existing, name)
        router = applied.get(children.router) if children.router else None
        url = endpoint(namespace, name, spec)
        desired = derive_status(current, models, router, url, generation, now)
        return self._finish(body, current, desired)

    def _finish(
        self, body: Json, current: ModelDeploymentStatus, desired: ModelDeploymentStatus
    ) -> tuple[Json | None, Event | None]:
        patch = status_patch(body.get("status"), desired)
        if not patch:
            return body, None
        meta = body["metadata"]
        answer = self.kube.patch_modeldeployment_status(meta["namespace"], meta["name"], patch)
        return answer, transition_event(current, desired) if answer is not None else None

    def _prune(self, namespace: str, name: str, wanted: set[tuple[str, str]]) -> dict[str, Json]:
        """Delete children not `wanted` (a removed model, an unneeded router); the kept
        Deployments by name."""
        selector = f"{names.LABEL_MDEP}={ftj_names.label_value(name)}"
        kept: dict[str, Json] = {}
        for api_version, plural, kind in CHILD_KINDS:
            for obj in self.kube.list_labelled(api_version, plural, namespace, selector):
                meta = obj["metadata"]
                if meta.get("annotations", {}).get(names.ANNOTATION_MDEP) != name:
                    continue  # another ModelDeployment whose name shortens to the same label
                if (kind, meta["name"]) not in wanted:
                    self.kube.delete_object(api_version, plural, namespace, meta["name"])
                elif kind == "Deployment":
                    kept[meta["name"]] = obj
        return kept

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _with_deployment(model: ModelState, applied: dict[str, Json], mdep: str) -> ModelState:
    if model.waiting is not None:
        return model
    deployment = applied.get(names.child_name(mdep, model.name))
    return ModelState(model.name, model.replicas, model.adapter, deployment=deployment)
