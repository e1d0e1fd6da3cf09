"""Which base model and adapter a server pod loads, and the volumes that make them visible.

Every PersistentVolumeClaim (base model, adapter) is mounted read-only at `/mnt/pvc/<claim>`,
the same layout the trainer pods use, so a FineTuneJob's `status.output.adapterPath`
(`pvc://<claim>/<dir>/adapter`) becomes `/mnt/pvc/<claim>/<dir>/adapter` in the server.
A model whose adapter is a FineTuneJob that has not Succeeded resolves to `Waiting`. Pure;
called by `plan` (with the FineTuneJob bodies `reconcile` read) and `builders`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from kubetune_api.deployment import ServedModel
from kubetune_operator.names import PVC_ROOT

Json = dict[str, Any]


@dataclass(frozen=True)
class Waiting:
    """A model that cannot be served yet: no Deployment is built for it."""

    reason: str
    message: str


@dataclass(frozen=True)
class Resolved:
    """The paths a server pod loads and the volumes it needs."""

    model: str
    adapter: str | None = None  # as the pod sees it
    adapter_ref: str | None = None  # as the user refers to it (status.models[].adapter)
    revision: str = ""  # changes when the adapter changes: rolls the Deployment
    claims: tuple[str, ...] = field(default=())

    def volumes(self) -> list[Json]:
        return [
            {"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": c, "readOnly": True}}
            for i, c in enumerate(self.claims)
        ]

    def mounts(self) -> list[Json]:
        return [
            {"name": f"pvc-{i}", "mountPath": f"{PVC_ROOT}/{c}", "readOnly": True}
            for i, c in enumerate(self.claims)
        ]


def _pvc_path(claim: str, sub: str) -> str:
    sub = sub.strip("/")
    return f"{PVC_ROOT}/{claim}/{sub}" if sub else f"{PVC_ROOT}/{claim}"


def _revision(*parts: str | None) -> str:
    return hashlib.sha256("\0".join(p or "" for p in parts).encode()).hexdigest()[:16]


def from_finetunejob(job: str, body: Json | None) -> tuple[str, str, str | None] | Waiting:
    """(pod path, reference, claim) of a Succeeded FineTuneJob's adapter, else Waiting."""
    if body is None:
        return Waiting("WaitingForFineTuneJob", f"FineTuneJob {job} does not exist (yet)")
    status = body.get("status") or {}
    phase = status.get("phase") or "Pending"
    ref = (status.get("output") or {}).get("adapterPath")
    if phase != "Succeeded" or not ref:
        return Waiting("WaitingForFineTuneJob", f"FineTuneJob {job} is {phase}, not Succeeded")
    if ref.startswith("pvc://"):
        claim, _, sub = ref.removeprefix("pvc://").partition("/")
        return _pvc_path(claim, sub), ref, claim
    return ref, ref, None


def resolve(model: ServedModel, jobs: dict[str, Json | None]) -> Resolved | Waiting:
    """The model's files, given the FineTuneJobs it may reference (name -> body or None)."""
    claims: list[str] = []
    base = model.model
    if model.model_pvc is not None:
        claims.append(model.model_pvc.claim_name)
        base = _pvc_path(model.model_pvc.claim_name, model.model_pvc.path)
    ad = model.adapter
    if ad is None:
        return Resolved(model=base, claims=tuple(claims))
    stamp: str | None = None
    if ad.fine_tune_job is not None:
        found = from_finetunejob(ad.fine_tune_job, jobs.get(ad.fine_tune_job))
        if isinstance(found, Waiting):
            return found
        path, ref, claim = found
        stamp = ((jobs[ad.fine_tune_job] or {}).get("status") or {}).get("completionTime")
        claims += [claim] if claim else []
    elif ad.pvc is not None:
        path = _pvc_path(ad.pvc.claim_name, ad.pvc.path)
        ref = f"pvc://{ad.pvc.claim_name}/{ad.pvc.path.strip('/')}"
        claims.append(ad.pvc.claim_name)
    else:
        path = ref = ad.path or ad.uri or ""
    unique = tuple(dict.fromkeys(claims))
    return Resolved(base, path, ref, _revision(path, stamp), unique)
