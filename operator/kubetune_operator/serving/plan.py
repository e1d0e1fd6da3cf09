"""What one ModelDeployment should look like now: the plan of one reconcile. Pure.

`parse_spec` validates the spec (pydantic plus the operator's own rules) and raises
`ConfigError` naming each bad field. `build_children` turns a valid spec and the FineTuneJobs
it references into the Deployments and Services to apply, skipping models still waiting for
their FineTuneJob. `plan_deployment` turns what `reconcile` read (`Seen`) into a `Plan`: the
objects to apply (in order), the children to prune, and the status, derived from the applied
Deployments as the API server answers (`Plan.desired`) or, when it rejects an object,
`Plan.rejected`. Called by `reconcile`, which carries the plan out through `kube`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kubetune_api.deployment import AdapterStatus, ModelDeploymentSpec, ModelDeploymentStatus
from kubetune_api.errors import ConfigError
from kubetune_operator.serving import builders, names
from kubetune_operator.serving.adapters import Waiting, resolve
from kubetune_operator.serving.builders import MdepOwner, endpoint
from kubetune_operator.serving.named_adapters import resolve_named
from kubetune_operator.serving.replicas import PodReport, settled
from kubetune_operator.serving.status import ModelState, derive_status, failed_status, parse_status
from kubetune_operator.serving.vllm import build_vllm_deployment
from kubetune_operator.settings import Settings

Json = dict[str, Any]
CHILD_KINDS = (
    ("apps/v1", "deployments", "Deployment"),
    ("v1", "services", "Service"),
    ("v1", "configmaps", "ConfigMap"),
)
QUANTITY = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?")


@dataclass
class Children:
    """The objects to apply, and per model what its Deployment will be (or why it waits)."""

    apply: list[Json] = field(default_factory=list)
    models: list[ModelState] = field(default_factory=list)
    router: str | None = None  # the router Deployment's name, when routed


def parse_spec(raw: Any) -> ModelDeploymentSpec:
    """The validated spec; raises ConfigError with one 'spec.<path>: reason' line per problem."""
    if not isinstance(raw, dict):
        raise ConfigError(["spec: required field is missing"])
    try:
        spec = ModelDeploymentSpec.model_validate(raw)
    except ValidationError as err:
        raise ConfigError.from_validation(err, prefix="spec") from None
    problems = [
        f"spec.models.{i}.name: {names.ROUTER!r} is the router's name; pick another"
        for i, m in enumerate(spec.models)
        if m.name == names.ROUTER and len(spec.models) > 1
    ] + quantity_problems(spec)
    if problems:
        raise ConfigError(problems)
    return spec


def quantity_problems(spec: ModelDeploymentSpec) -> list[str]:
    """Resource values the API server would refuse in a Deployment (e.g. memory: lots)."""
    problems = []
    for i, m in enumerate(spec.models):
        for kind in ("requests", "limits"):
            values = getattr(m.resources, kind) if m.resources is not None else None
            for key, value in (values or {}).items():
                if not QUANTITY.fullmatch(str(value)):
                    where = f"spec.models.{i}.resources.{kind}.{key}"
                    problems.append(f"{where}: not a Kubernetes quantity, got {value!r}")
    return problems


def referenced_jobs(spec: ModelDeploymentSpec) -> list[str]:
    """FineTuneJob names the spec serves adapters of (sorted, unique)."""
    jobs = {m.adapter.fine_tune_job for m in spec.models if m.adapter is not None}
    jobs |= {a.fine_tune_job for m in spec.models for a in m.adapters or []}
    return sorted(j for j in jobs if j is not None)


def build_children(
    owner: MdepOwner,
    spec: ModelDeploymentSpec,
    jobs: dict[str, Json | None],
    settings: Settings,
    served: ModelDeploymentStatus | None = None,
    reports: dict[str, list[PodReport]] | None = None,
) -> Children:
    """Services for every model, Deployments for models that can be served, the router.

    `served` is the current status: what each named adapter serves now (for promotion);
    `reports`: per model, what its ready server pods said (`replica_probe`), when asked.
    """
    out = Children()
    port = spec.server.port
    for model in spec.models:
        out.apply.append(builders.build_service(owner, model.name, port))
        files = resolve(model, jobs)
        if isinstance(files, Waiting):
            out.models.append(ModelState(model.name, model.replicas, None, waiting=files))
            continue
        pods = (reports or {}).get(model.name)
        named = resolve_named(model, jobs, served_adapters(served, model.name), pods)
        files = replace(files, claims=tuple(dict.fromkeys([*files.claims, *named.claims])))
        if model.runtime == "vllm":
            deployment = build_vllm_deployment(owner, spec, model, files, named.folders, settings)
        else:
            deployment = builders.build_server_deployment(owner, spec, model, files, settings)
        if model.adapters is not None and model.runtime != "vllm":
            out.apply.append(
                builders.build_adapters_config_map(owner, model.name, named.folders, named.canaries)
            )
        out.apply.append(deployment)
        adapters = named.statuses if model.adapters is not None else None
        out.models.append(
            ModelState(model.name, model.replicas, files.adapter_ref, adapters=adapters)
        )
    if len(spec.models) > 1:
        out.apply.append(builders.build_router_deployment(owner, spec, settings))
        out.apply.append(builders.build_service(owner, names.ROUTER, port))
        out.router = names.router_name(owner.name)
    return out


def probed_models(spec: ModelDeploymentSpec) -> set[str]:
    """Models whose server pods are asked for their adapter state (named adapters, our server)."""
    return {m.name for m in spec.models if m.adapters and m.runtime == "kubetune"}


def next_poll(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, every: float
) -> float | None:
    """Seconds until the pods should be asked again: `every` while an adapter is unsettled (or
    a canary runs), 6x that once all are, None without named adapters on our server."""
    probed = probed_models(spec)
    if not probed:
        return None
    adapters = [a for m in status.models or [] if m.name in probed for a in m.adapters or []]
    return every * 6 if all(settled(a) for a in adapters) else every


def served_adapters(status: ModelDeploymentStatus | None, model: str) -> dict[str, AdapterStatus]:
    """name -> status of the named adapters `model` serves now, per the stored status."""
    for m in (status.models if status is not None else None) or []:
        if m.name == model:
            return {a.name: a for a in m.adapters or []}
    return {}


def carry_over(models: list[ModelState], existing: dict[str, Json], mdep: str) -> list[ModelState]:
    """Waiting models that already have a Deployment keep serving it (its last adapter).

    A FineTuneJob that runs again (phase Running) or is deleted must not take its model
    down: the Deployment built from the previous success stays, untouched, until the job
    Succeeds again and the new adapter rolls out.
    """
    out = []
    for m in models:
        found = existing.get(names.child_name(mdep, m.name))
        if m.waiting is None or found is None:
            out.append(m)
            continue
        notes = found["spec"]["template"]["metadata"].get("annotations") or {}
        adapter = notes.get(names.ANNOTATION_ADAPTER)
        out.append(ModelState(m.name, found["spec"].get("replicas", 0), adapter, found))
    return out


def wanted_children(
    children: Children, spec: ModelDeploymentSpec, mdep: str
) -> set[tuple[str, str]]:
    """(kind, name) of every child to keep: what is applied, and every model's Deployment."""
    wanted = {(o["kind"], o["metadata"]["name"]) for o in children.apply}
    return wanted | {("Deployment", names.child_name(mdep, m.name)) for m in spec.models}


@dataclass(frozen=True)
class Seen:
    """What `reconcile` read: the ModelDeployment, its spec (or why it is invalid), the
    FineTuneJobs it serves (name -> body or None) and its children (apiVersion, plural, body)."""

    body: Json
    spec: ModelDeploymentSpec | ConfigError
    jobs: dict[str, Json | None] = field(default_factory=dict)
    children: list[tuple[str, str, Json]] = field(default_factory=list)
    reports: dict[str, list[PodReport]] | None = None  # model -> its ready pods' answers


@dataclass
class Plan:
    """One reconcile: apply `apply` in order, delete `prune` (apiVersion, plural, name), then
    patch `status` (an invalid spec: known before any write) or `desired(applied)`."""

    current: ModelDeploymentStatus
    generation: int | None
    now: datetime
    status: ModelDeploymentStatus | None = None
    apply: list[Json] = field(default_factory=list)
    prune: list[tuple[str, str, str]] = field(default_factory=list)
    models: list[ModelState] = field(default_factory=list)
    kept: dict[str, Json] = field(default_factory=dict)  # Deployments kept, by name
    router: str | None = None
    mdep: str = ""
    endpoint: str = ""

    def desired(self, applied: dict[str, Json]) -> ModelDeploymentStatus:
        """The status given the applied Deployments (name -> as stored, status included)."""
        models = [_with_deployment(m, applied, self.mdep) for m in self.models]
        models = carry_over(models, self.kept, self.mdep)
        router = applied.get(self.router) if self.router else None
        return derive_status(self.current, models, router, self.endpoint, self.generation, self.now)

    def rejected(self, obj: Json, message: str) -> ModelDeploymentStatus:
        """Failed/Rejected: the API server refused `obj` (400/422), naming it."""
        problem = f"the API server rejected {obj['kind']} {obj['metadata']['name']}: {message}"
        return failed_status(self.current, [problem], self.generation, self.now, "Rejected")


def plan_deployment(seen: Seen, settings: Settings, now: datetime) -> Plan:
    """The plan for one ModelDeployment that exists and is not being deleted."""
    body, spec = seen.body, seen.spec
    meta = body["metadata"]
    plan = Plan(parse_status(body.get("status")), meta.get("generation"), now)
    if isinstance(spec, ConfigError):
        plan.status = failed_status(plan.current, spec.problems, plan.generation, now)
        return plan
    children = build_children(
        MdepOwner.of(body), spec, seen.jobs, settings, plan.current, seen.reports
    )
    plan.apply, plan.models, plan.router = children.apply, children.models, children.router
    plan.mdep, plan.endpoint = meta["name"], endpoint(meta["namespace"], meta["name"], spec)
    wanted = wanted_children(children, spec, meta["name"])
    for api_version, plural, obj in seen.children:
        child = obj["metadata"]
        if child.get("annotations", {}).get(names.ANNOTATION_MDEP) != meta["name"]:
            continue  # another ModelDeployment whose name shortens to the same label
        kind = next(k for v, p, k in CHILD_KINDS if (v, p) == (api_version, plural))
        if (kind, child["name"]) not in wanted:
            plan.prune.append((api_version, plural, child["name"]))
        elif kind == "Deployment":
            plan.kept[child["name"]] = obj
    return plan


def _with_deployment(model: ModelState, applied: dict[str, Json], mdep: str) -> ModelState:
    if model.waiting is not None:
        return model
    deployment = applied.get(names.child_name(mdep, model.name))
    return ModelState(
        model.name, model.replicas, model.adapter, deployment=deployment, adapters=model.adapters
    )
