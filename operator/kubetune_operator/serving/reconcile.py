"""The ModelDeployment's runner wiring: read, plan (`plan.plan_deployment`), write through `kube`.

`ModelDeployments.sync` is the `Sync` that `runner.Runner` calls for every trigger (spec change,
a child Deployment changed, a referenced FineTuneJob changed, the next adapter poll),
serialised and coalesced per ModelDeployment; the blocking part runs on the runner's thread
pool. `read` gathers the ModelDeployment, the FineTuneJobs it serves, its labelled children and,
for models with named adapters, what their ready server pods report (`replica_probe`, asked
again every `Settings.adapter_poll_seconds` while an adapter is unsettled); `write` applies the
plan's objects in order (an object the API server rejects, 400/422, fails the ModelDeployment
as Rejected), prunes, and patches the status derived from the answers, so a reconcile makes no
extra reads. An Event is posted on a phase transition. Built by `cli`; the handlers reach it
through `serving.handlers.PARTS`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kubetune_api.deployment import ModelDeploymentStatus
from kubetune_api.errors import ConfigError
from kubetune_operator import names as ftj_names
from kubetune_operator.kube import Kube
from kubetune_operator.runner import EventPoster, Outcome, Runner, post_event
from kubetune_operator.serving import names
from kubetune_operator.serving.plan import (
    CHILD_KINDS,
    Plan,
    Seen,
    next_poll,
    parse_spec,
    plan_deployment,
    probed_models,
    referenced_jobs,
)
from kubetune_operator.serving.replica_probe import probe_servers
from kubetune_operator.serving.status import adapter_events, status_patch, transition_event
from kubetune_operator.settings import Settings

Key = tuple[str, str]
Json = dict[str, Any]


class ModelDeployments:
    """Plans ModelDeployments and carries the plans out; `runner` runs it per ModelDeployment."""

    def __init__(
        self, kube: Kube, settings: Settings, post: EventPoster = post_event, workers: int = 8
    ) -> None:
        self.kube, self.settings = kube, settings
        self.runner: Runner[None] = Runner(
            "ModelDeployment", self.sync, post, workers=workers, retry_every_error=True
        )

    async def sync(self, key: Key, full: bool, context: None) -> Outcome | None:
        """The whole reconcile, on the thread pool (each step waits on the one before)."""
        result: Outcome | None = await self.runner.call(self.reconcile, key)
        return result

    def reconcile(self, key: Key) -> Outcome | None:
        """Blocking: read, plan, write; the body after the status patch and its Event."""
        seen = self.read(key)
        if seen is None:
            return None
        plan = plan_deployment(seen, self.settings, datetime.now(UTC))
        desired = plan.status or self.write(key, plan)
        poll = None
        if not isinstance(seen.spec, ConfigError):
            poll = next_poll(seen.spec, desired, self.settings.adapter_poll_seconds)
        patch = status_patch(seen.body.get("status"), desired)
        if not patch:
            return Outcome(seen.body, requeue_after=poll)
        answer = self.kube.patch_modeldeployment_status(*key, patch)
        if answer is None:
            return Outcome(answer, [])
        event = transition_event(plan.current, desired)
        events = ([event] if event is not None else []) + adapter_events(plan.current, desired)
        return Outcome(answer, events, requeue_after=poll)

    def read(self, key: Key) -> Seen | None:
        """The ModelDeployment and, for a valid spec, its FineTuneJobs and children; None when
        it is gone or being deleted."""
        namespace, name = key
        body = self.kube.read_modeldeployment(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        try:
            spec = parse_spec(body.get("spec"))
        except ConfigError as err:
            return Seen(body, err)
        jobs = {j: self.kube.read_finetunejob(namespace, j) for j in referenced_jobs(spec)}
        selector = f"{names.LABEL_MDEP}={ftj_names.label_value(name)}"
        children = [
            (api_version, plural, obj)
            for api_version, plural, _ in CHILD_KINDS
            for obj in self.kube.list_labelled(api_version, plural, namespace, selector)
        ]
        reports = None
        if probed := probed_models(spec):
            pods = self.kube.list_labelled("v1", "pods", namespace, selector)
            reports = probe_servers(pods, probed, spec.server.port, self.settings)
        return Seen(body, spec, jobs, children, reports)

    def write(self, key: Key, plan: Plan) -> ModelDeploymentStatus:
        """Apply in order, then prune; the desired status (Rejected when an apply was)."""
        applied = self.kube.apply_all(plan.apply)
        if applied.rejected is not None and applied.error is not None:
            return plan.rejected(applied.rejected, applied.error.message)
        for api_version, plural, name in plan.prune:
            self.kube.delete_object(api_version, plural, key[0], name)
        deployments = {
            obj["metadata"]["name"]: answer
            for obj, answer in zip(plan.apply, applied.answers, strict=True)
            if obj["kind"] == "Deployment"
        }
        return plan.desired(deployments)
