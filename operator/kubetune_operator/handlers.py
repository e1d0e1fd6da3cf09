"""kopf registrations: what wakes the reconciler, and kopf's own settings.

Each handler is a few lines: find the FineTuneJob key, call `Reconciler.reconcile`. Children
(Jobs and pods labelled `kubetune.io/finetunejob`) are indexed in memory, so a reconcile reads
only its FineTuneJob from the API. Handlers never return values (kopf would store them in
`status`), and kopf keeps its bookkeeping in `kubetune.io/*` annotations, out of the status.
ModelDeployments have their own handlers (`serving.handlers`), attached at the end of
`register`. `register` is called by `cli` with a fresh registry; nothing happens at import time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from logging import Logger, LoggerAdapter
from typing import Any, cast

import kopf

from kubetune_operator import names
from kubetune_operator.kube import KubeError
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.observe import job_snapshot, pod_snapshot
from kubetune_operator.plan import Event
from kubetune_operator.reconcile import Indexes, Reconciler
from kubetune_operator.serving import handlers as serving
from kubetune_operator.serving.reconcile import ServingReconciler

FTJ = (names.GROUP, "v1alpha1", names.PLURAL)
CHILDREN: dict[str, Any] = {
    names.LABEL_FTJ: kopf.PRESENT,
    names.LABEL_MANAGED_BY: names.FIELD_MANAGER,
}
Json = dict[str, Any]
CHILD_DEBOUNCE = 0.25  # seconds: one reconcile per burst of Job/pod events


def configure(settings: kopf.OperatorSettings, workers: int) -> None:
    """kopf's progress and diff-base in annotations; only its warnings become Events."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = workers
    settings.watching.server_timeout = 300


def post_event(body: Json, event: Event) -> None:
    """A Kubernetes Event on the FineTuneJob (kopf batches and posts it)."""
    raw = cast(kopf.RawBody, body)
    kopf.event(kopf.Body(raw), type=event.type, reason=event.reason, message=event.message)


def _owner_key(namespace: str | None, annotations: Mapping[str, str]) -> tuple[str, str] | None:
    name = annotations.get(names.ANNOTATION_FTJ)
    return (namespace, name) if namespace and name else None


def register(
    registry: kopf.OperatorRegistry,
    reconciler: Reconciler,
    metrics: OperatorMetrics,
    workers: int = 8,
) -> None:
    """Attach every handler to `registry`."""

    @kopf.on.startup(id="settings", registry=registry)
    async def startup(*, settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, workers)

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)  # in-cluster token, else KUBECONFIG

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def cleanup(**_: Any) -> None:
        reconciler.close()

    @kopf.index("batch", "v1", "jobs", id="ftj_jobs", labels=CHILDREN, registry=registry)
    async def ftj_jobs(
        *, namespace: str | None, annotations: Mapping[str, str], body: kopf.Body, **_: Any
    ) -> Any:
        key = _owner_key(namespace, annotations)
        return {key: job_snapshot(dict(body))} if key else None

    @kopf.index("", "v1", "pods", id="ftj_pods", labels=CHILDREN, registry=registry)
    async def ftj_pods(
        *, namespace: str | None, annotations: Mapping[str, str], body: kopf.Body, **_: Any
    ) -> Any:
        key = _owner_key(namespace, annotations)
        return {key: pod_snapshot(dict(body))} if key else None

    @kopf.on.create(*FTJ, id="reconcile", registry=registry)
    @kopf.on.update(*FTJ, id="reconcile", registry=registry)
    @kopf.on.resume(*FTJ, id="reconcile", registry=registry)
    async def spec_changed(
        *, namespace: str | None, name: str, reason: str, body: kopf.Body, **kwargs: Any
    ) -> None:
        indexes = Indexes(kwargs["ftj_jobs"], kwargs["ftj_pods"])
        reconciler.observe((namespace or "", name), dict(body))
        try:
            await reconciler.reconcile((namespace or "", name), indexes, full=True, trigger=reason)
        except KubeError as err:
            if err.temporary:
                raise kopf.TemporaryError(str(err), delay=5) from err
            raise kopf.PermanentError(str(err)) from err

    @kopf.on.event("batch", "v1", "jobs", id="job", labels=CHILDREN, registry=registry)
    @kopf.on.event("", "v1", "pods", id="pod", labels=CHILDREN, registry=registry)
    async def child_changed(
        *,
        namespace: str | None,
        annotations: Mapping[str, str],
        logger: Logger | LoggerAdapter[Any],
        **kwargs: Any,
    ) -> None:
        key = _owner_key(namespace, annotations)
        if key is None:
            return
        indexes = Indexes(kwargs["ftj_jobs"], kwargs["ftj_pods"])
        try:
            await reconciler.reconcile(key, indexes, trigger="child", delay=CHILD_DEBOUNCE)
        except KubeError as err:  # the next event or a resume converges; nothing to retry here
            logger.warning("reconcile of %s/%s after a child change failed: %s", *key, err)

    @kopf.on.event(*FTJ, id="phase", registry=registry)
    async def track(
        *,
        type: str,
        namespace: str | None,
        name: str,
        status: kopf.Status,
        body: kopf.Body,
        **_: Any,
    ) -> None:
        key, deleted = (namespace or "", name), type == "DELETED"
        metrics.observe_phase(key, status.get("phase"), deleted=deleted)
        reconciler.observe(key, dict(body), deleted=deleted)

    @kopf.on.probe(id="finetunejobs", registry=registry)
    async def tracked(**_: Any) -> int:
        return len(metrics.phases)  # probe results go to the health endpoint, not to any status

    serving.register(registry, ServingReconciler(reconciler.kube, reconciler.settings, post_event))
