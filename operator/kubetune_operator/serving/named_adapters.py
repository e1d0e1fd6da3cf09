"""Which folder each named adapter serves now, gated by evaluation and optionally by a canary.

`plan.build_children` calls `resolve_named` for a model with `adapters:`; it gets the
FineTuneJob bodies `reconcile` read, what the ModelDeployment's status says each adapter
serves now (`status.models[].adapters[]`: folder, the run's completionTime and evalLoss, its
canary) and what every ready server pod reports (`replica_probe`). An adapter from a path or
claim is served as given. One from a FineTuneJob serves the job's latest Succeeded run, except
that with `promotion` a new run replaces the served one only if its `status.metrics.evalLoss`
is no worse than the served run's plus `maxRegression`; otherwise the served folder stays and
the status says why (`status.adapter_events` turns that into an Event). With
`promotion.canaryPercent` a run that passes that gate is first served beside the old one as a
canary, and `canary.judged` promotes or rolls it back from the pods' counts. A job that is
running again, or deleted, leaves the served folder in place; one that never succeeded is
Pending; one that Failed before anything was served is Failed with its message. Last,
`replicas.with_replicas` adds what each pod serves.

Caveat: a FineTuneJob that runs again usually writes the same adapter folder, so a kept
adapter keeps serving from the servers' memory; a server that starts later loads the folder
as it is then. Point `fineTuneJob` at a new job (its own folder) to keep both runs on disk.
Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubetune_api.deployment import AdapterStatus, CanaryStatus, NamedAdapter, ServedModel
from kubetune_operator.names import PVC_ROOT
from kubetune_operator.serving.adapters import Waiting, _pvc_path, from_finetunejob
from kubetune_operator.serving.canary import judged
from kubetune_operator.serving.replicas import PodReport, with_replicas

Json = dict[str, Any]


@dataclass
class NamedFiles:
    """What a model's servers load: name -> folder (and canary), the claims, and each status."""

    folders: dict[str, str] = field(default_factory=dict)
    canaries: dict[str, tuple[str, float]] = field(default_factory=dict)  # name -> folder, percent
    claims: list[str] = field(default_factory=list)
    statuses: list[AdapterStatus] = field(default_factory=list)


@dataclass(frozen=True)
class Run:
    """One Succeeded FineTuneJob run: its adapter and evaluation."""

    path: str
    ref: str
    claim: str | None
    revision: str | None
    eval_loss: float | None


def latest_run(job: str, body: Json | None) -> Run | Waiting:
    """The job's Succeeded run, else Waiting (reason says Failed when it failed)."""
    found = from_finetunejob(job, body)
    status = (body or {}).get("status") or {}
    if isinstance(found, Waiting):
        if status.get("phase") == "Failed":
            message = status.get("message") or "no message"
            return Waiting("FineTuneJobFailed", f"FineTuneJob {job} failed: {message}")
        return found
    path, ref, claim = found
    loss = (status.get("metrics") or {}).get("evalLoss")
    revision = status.get("completionTime")
    return Run(path, ref, claim, revision, float(loss) if loss is not None else None)


def _gate(adapter: NamedAdapter, run: Run, served: AdapterStatus) -> str | None:
    """Why `run` must not replace the served adapter (None: promote it)."""
    rule = adapter.promotion
    if rule is None or served.eval_loss is None:
        return None
    if run.eval_loss is None:
        return f"run {run.revision} has no evalLoss, and promotion compares evalLoss"
    limit = served.eval_loss + rule.max_regression
    if run.eval_loss > limit:
        return (
            f"not promoted: run {run.revision} has evalLoss {run.eval_loss:.4g}, worse than the "
            f"served {served.eval_loss:.4g} + maxRegression {rule.max_regression:g}"
        )
    return None


def _from_job(
    adapter: NamedAdapter, body: Json | None, served: AdapterStatus | None
) -> AdapterStatus:
    job = adapter.fine_tune_job or ""
    run = latest_run(job, body)
    live = served if served is not None and served.path else None
    if isinstance(run, Waiting):
        if live is not None:
            return live.model_copy(update={"state": "Configured", "reason": run.message})
        state = "Failed" if run.reason == "FineTuneJobFailed" else "Pending"
        return AdapterStatus(name=adapter.name, state=state, reason=run.message)  # type: ignore[arg-type]
    if live is None:
        return _serving(adapter.name, run)
    kept = live.model_copy(update={"state": "Configured", "reason": None})
    trial = live.canary
    if trial is not None and trial.state == "Running" and trial.revision != run.revision:
        kept = kept.model_copy(update={"canary": None})  # a newer run replaces the one on trial
    if live.revision == run.revision and live.path == run.path:
        return kept
    refused = _gate(adapter, run, live)
    if refused is not None:
        return kept.model_copy(update={"reason": refused})
    percent = adapter.promotion.canary_percent if adapter.promotion is not None else None
    if percent is None:
        return _serving(adapter.name, run)
    if trial is not None and trial.revision == run.revision and trial.path == run.path:
        if trial.state == "RolledBack":
            return kept.model_copy(update={"reason": f"not promoted: {trial.reason}"})
        return kept
    canary = CanaryStatus(
        path=run.path, revision=run.revision, eval_loss=run.eval_loss, percent=percent,
        state="Running",
    )  # fmt: skip
    return kept.model_copy(update={"canary": canary})


def _serving(name: str, run: Run) -> AdapterStatus:
    return AdapterStatus(
        name=name, state="Configured", path=run.path, eval_loss=run.eval_loss, revision=run.revision
    )


def _claim_of(path: str) -> str | None:
    """The claim a served folder lives on (`/mnt/pvc/<claim>/...`), if any."""
    prefix = f"{PVC_ROOT}/"
    return path.removeprefix(prefix).split("/", 1)[0] if path.startswith(prefix) else None


def resolve_named(
    model: ServedModel,
    jobs: dict[str, Json | None],
    served: dict[str, AdapterStatus],
    reports: list[PodReport] | None = None,
) -> NamedFiles:
    """The folders and statuses of `model.adapters`, given what each serves now and, when the
    pods were asked (`reports`), what each ready server pod says."""
    out = NamedFiles()
    for adapter in model.adapters or []:
        body = jobs.get(adapter.fine_tune_job) if adapter.fine_tune_job else None
        if adapter.fine_tune_job is not None:
            status = _from_job(adapter, body, served.get(adapter.name))
        elif adapter.pvc is not None:
            path = _pvc_path(adapter.pvc.claim_name, adapter.pvc.path)
            status = AdapterStatus(name=adapter.name, state="Configured", path=path)
        else:
            path = adapter.path or adapter.uri or ""
            status = AdapterStatus(name=adapter.name, state="Configured", path=path)
        if reports is not None:
            rule = adapter.promotion
            status = judged(status, reports, rule.canary_min_requests if rule else 1)
            status = with_replicas(status, reports)
        out.statuses.append(status)
        _add_files(out, status)
    return out


def _add_files(out: NamedFiles, status: AdapterStatus) -> None:
    """The folders `status` serves (and its running canary's), and the claims they are on."""
    if status.path is None:
        return
    out.folders[status.name] = status.path
    paths = [status.path]
    canary = status.canary
    if canary is not None and canary.state == "Running":
        out.canaries[status.name] = (canary.path, canary.percent)
        paths.append(canary.path)
    for path in paths:
        claim = _claim_of(path)
        if claim and claim not in out.claims:
            out.claims.append(claim)
