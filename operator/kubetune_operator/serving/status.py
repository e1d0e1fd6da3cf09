"""A ModelDeployment's status from its Deployments: phase, ready count, endpoint, conditions.

Phases: Pending (a model waits for its FineTuneJob), Progressing (Deployments rolling out or
pods not ready yet), Available (every Deployment rolled out and all pods ready), Degraded (a
rollout stalled past its deadline, or pods stopped being ready after a finished rollout) and
Failed (an invalid spec). One condition, `Ready`, carries the reason (`Available`,
`WaitingForFineTuneJob`, `Progressing`, `Degraded`, `InvalidSpec`), and `transition_event` posts
an Event when the phase changes. Pure; called by `plan`, and by `reconcile`, which patches only
what changed (`status_patch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from kubetune_api.deployment import AdapterStatus, ModelDeploymentStatus, ServedModelStatus
from kubetune_api.status import Condition
from kubetune_operator.serving.adapters import Waiting
from kubetune_operator.status import Event, set_condition, shorten

Json = dict[str, Any]
OWNED_KEYS = ("phase", "ready", "models", "endpoint", "conditions", "observedGeneration", "message")
READY = "Ready"


@dataclass(frozen=True)
class ModelState:
    """One model's desired replicas, adapter, and its Deployment (None: not built) or wait."""

    name: str
    replicas: int
    adapter: str | None
    deployment: Json | None = None
    waiting: Waiting | None = None
    adapters: list[AdapterStatus] | None = None  # named adapters (spec.models[].adapters)


def rollout(deployment: Json | None, replicas: int) -> str:
    """'done', 'rolling' or 'stalled' for one Deployment as its controller reports it."""
    if deployment is None:
        return "rolling"
    st = deployment.get("status") or {}
    conds = {c.get("type"): c for c in st.get("conditions") or []}
    progressing = conds.get("Progressing") or {}
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return "stalled"
    generation = deployment.get("metadata", {}).get("generation", 0)
    current = st.get("observedGeneration", 0) >= generation
    updated = st.get("updatedReplicas", 0) >= replicas
    ready = st.get("readyReplicas", 0) >= replicas and st.get("replicas", 0) <= replicas
    if current and updated and ready:
        return "done"
    if current and updated and progressing.get("reason") == "NewReplicaSetAvailable":
        return "stalled"  # rolled out earlier, pods lost readiness since
    return "rolling"


def ready_replicas(deployment: Json | None) -> int:
    return int(((deployment or {}).get("status") or {}).get("readyReplicas", 0))


def _phase(models: list[ModelState], router: Json | None, routed: bool) -> tuple[str, str, str]:
    """(phase, reason, message)."""
    waiting = [m for m in models if m.waiting is not None]
    if waiting:
        first = waiting[0].waiting
        assert first is not None
        return "Pending", first.reason, f"model {waiting[0].name}: {first.message}"
    states = {m.name: rollout(m.deployment, m.replicas) for m in models}
    if routed:
        states["router"] = rollout(router, 1)
    stalled = sorted(n for n, s in states.items() if s == "stalled")
    if stalled:
        return "Degraded", "Degraded", f"not all pods ready: {', '.join(stalled)}"
    failed = [(m.name, a) for m in models for a in m.adapters or [] if a.state == "Failed"]
    if failed:
        model, adapter = failed[0]
        return (
            "Degraded",
            "AdapterFailed",
            f"model {model} adapter {adapter.name}: {adapter.reason}",
        )
    rolling = sorted(n for n, s in states.items() if s == "rolling")
    if rolling:
        return "Progressing", "Progressing", f"rolling out: {', '.join(rolling)}"
    return "Available", "Available", "all models ready"


def derive_status(
    current: ModelDeploymentStatus,
    models: list[ModelState],
    router: Json | None,
    endpoint: str,
    generation: int | None,
    now: datetime,
) -> ModelDeploymentStatus:
    """The desired status given each model's Deployment (and the router's, when routed)."""
    phase, reason, message = _phase(models, router, routed=len(models) > 1)
    ready = sum(min(ready_replicas(m.deployment), m.replicas) for m in models)
    conditions = set_condition(
        list(current.conditions or []), READY, phase == "Available", reason, message, now
    )
    return ModelDeploymentStatus(
        phase=phase,  # type: ignore[arg-type]  # one of the Literal's values by construction
        ready=f"{ready}/{sum(m.replicas for m in models)}",
        models=[
            ServedModelStatus(
                name=m.name,
                replicas=m.replicas,
                ready_replicas=ready_replicas(m.deployment),
                adapter=m.adapter,
                adapters=m.adapters,
            )
            for m in models
        ],
        endpoint=endpoint,
        conditions=conditions,
        observed_generation=generation,
        message=shorten(message),
    )


def failed_status(
    current: ModelDeploymentStatus,
    problems: list[str],
    generation: int | None,
    now: datetime,
    reason: str = "InvalidSpec",
) -> ModelDeploymentStatus:
    """Failed/InvalidSpec naming each bad field (or `reason`, e.g. Rejected by the API)."""
    prefix = "invalid spec: " if reason == "InvalidSpec" else ""
    message = prefix + "; ".join(problems)
    conditions: list[Condition] = set_condition(
        list(current.conditions or []), READY, False, reason, message, now
    )
    return ModelDeploymentStatus(
        phase="Failed",
        conditions=conditions,
        observed_generation=generation,
        message=shorten(message),
    )


def parse_status(raw: Any) -> ModelDeploymentStatus:
    """The stored status; one that does not parse counts as empty."""
    try:
        return ModelDeploymentStatus.model_validate(raw if isinstance(raw, dict) else {})
    except ValueError:
        return ModelDeploymentStatus()


def status_patch(current: Any, desired: ModelDeploymentStatus) -> Json:
    """A JSON merge patch of the status keys that changed; {} when nothing did."""
    have = current if isinstance(current, dict) else {}
    want = desired.to_wire()
    return {k: want.get(k) for k in OWNED_KEYS if want.get(k) != have.get(k)}


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


def adapter_events(old: ModelDeploymentStatus, new: ModelDeploymentStatus) -> list[Event]:
    """Events for named adapters: failed, canary started or rolled back, promoted (a new run
    served), kept (promotion refused)."""
    before = {(m.name, a.name): a for m in old.models or [] for a in m.adapters or []}
    events = []
    for m in new.models or []:
        for a in m.adapters or []:
            event = _adapter_event(
                f"model {m.name} adapter {a.name}", before.get((m.name, a.name)), a
            )
            if event is not None:
                events.append(event)
    return events


def _adapter_event(where: str, was: AdapterStatus | None, now: AdapterStatus) -> Event | None:
    """The one Event (if any) for the change of one named adapter."""
    trial, old_trial = now.canary, was.canary if was is not None else None
    new_trial = trial is not None and (old_trial is None or old_trial.revision != trial.revision)
    if now.state == "Failed" and (was is None or was.state != "Failed"):
        return Event("Warning", "AdapterFailed", f"{where}: {now.reason}")
    if (
        trial is not None
        and trial.state == "RolledBack"
        and (new_trial or (old_trial is not None and old_trial.state != "RolledBack"))
    ):
        return Event(
            "Warning", "CanaryRolledBack", f"{where}: run {trial.revision}: {trial.reason}"
        )
    if trial is not None and trial.state == "Running" and new_trial:
        share = f"{trial.percent:g}% of its requests"
        return Event("Normal", "CanaryStarted", f"{where}: run {trial.revision} takes {share}")
    if was is not None and was.path and now.revision != was.revision:
        loss = f" (evalLoss {now.eval_loss:.4g})" if now.eval_loss is not None else ""
        if trial is not None and trial.state == "Promoted" and trial.revision == now.revision:
            loss += (
                f" after its canary: {trial.errors} of {trial.requests} requests failed "
                f"(served: {trial.stable_errors} of {trial.stable_requests})"
            )
        return Event("Normal", "AdapterPromoted", f"{where}: run {now.revision}{loss}")
    if (
        now.reason
        and now.reason.startswith("not promoted")
        and (was is None or was.reason != now.reason)
    ):
        return Event("Warning", "PromotionRefused", f"{where}: {now.reason}")
    return None
