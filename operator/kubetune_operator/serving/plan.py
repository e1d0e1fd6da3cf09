"""What one ModelDeployment should look like now: the objects to apply and the model states.

`parse_spec` validates the spec (pydantic plus the operator's own rules) and raises
`ConfigError` naming each bad field. `build_children` turns a valid spec and the FineTuneJobs
it references into the Deployments and Services to apply, skipping models still waiting for
their FineTuneJob. Pure; called by `reconcile`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kubetune_api.deployment import ModelDeploymentSpec
from kubetune_api.errors import ConfigError
from kubetune_operator.serving import builders, names
from kubetune_operator.serving.adapters import Waiting, resolve
from kubetune_operator.serving.builders import MdepOwner
from kubetune_operator.serving.status import ModelState
from kubetune_operator.settings import Settings

Json = dict[str, Any]
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
    return sorted(j for j in jobs if j is not None)


def build_children(
    owner: MdepOwner, spec: ModelDeploymentSpec, jobs: dict[str, Json | None], settings: Settings
) -> Children:
    """Services for every model, Deployments for models that can be served, the router."""
    out = Children()
    port = spec.server.port
    for model in spec.models:
        out.apply.append(builders.build_service(owner, model.name, port))
        files = resolve(model, jobs)
        if isinstance(files, Waiting):
            out.models.append(ModelState(model.name, model.replicas, None, waiting=files))
            continue
        deployment = builders.build_server_deployment(owner, spec, model, files, settings)
        out.apply.append(deployment)
        out.models.append(ModelState(model.name, model.replicas, files.adapter_ref))
    if len(spec.models) > 1:
        out.apply.append(builders.build_router_deployment(owner, spec, settings))
        out.apply.append(builders.build_service(owner, names.ROUTER, port))
        out.router = names.router_name(owner.name)
    return out


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
