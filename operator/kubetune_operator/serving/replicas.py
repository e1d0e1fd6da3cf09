"""Per-replica state of each named adapter, from what the server pods report. Pure.

`named_adapters.resolve_named` calls `with_replicas` once it knows which folder each adapter
should serve: every ready server pod's report (a `PodReport`, from `replica_probe`) says, per adapter, the
folder it asked for last (as a digest), and whether that load is Loading, Loaded or Failed. A pod
that reports another folder has not seen the new adapter list yet (the kubelet refreshes a
mounted ConfigMap within about a minute), so it is Loading; a pod that did not answer is
Unknown. The adapter's own state sums the pods up: Failed when a pod failed to load it (the
reason names the pod), Loaded when every ready pod serves it, Loading while some do not yet,
and Configured while no pod has reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetune_api.adapter_report import AdapterReport, AdaptersReport, path_digest
from kubetune_api.deployment import AdapterStatus, ReplicaAdapterState


@dataclass(frozen=True)
class PodReport:
    """One ready server pod's answer (`replica_probe`), or why there is none (`problem`)."""

    pod: str
    report: AdaptersReport | None = None
    problem: str | None = None


def entry_of(report: PodReport, adapter: str) -> AdapterReport | None:
    """The pod's report of `adapter`, if it has one."""
    found = report.report.adapters if report.report is not None else []
    return next((a for a in found if a.name == adapter), None)


def replica_state(report: PodReport, adapter: str, folder: str) -> ReplicaAdapterState:
    """What one pod says about `adapter`, which should serve `folder`."""
    if report.report is None:
        return ReplicaAdapterState(pod=report.pod, state="Unknown", reason=report.problem)
    entry = entry_of(report, adapter)
    if entry is None or entry.path_digest != path_digest(folder):
        why = report.report.config_error or "the pod has not seen the new adapter list yet"
        return ReplicaAdapterState(pod=report.pod, state="Loading", reason=why)
    return ReplicaAdapterState(pod=report.pod, state=entry.state, reason=entry.reason)


def settled(status: AdapterStatus) -> bool:
    """Whether only a change elsewhere (spec, job, a pod's readiness: each wakes a reconcile)
    can change this adapter's state; Configured too: no ready pod could be asked."""
    running = status.canary is not None and status.canary.state == "Running"
    return status.state in ("Pending", "Configured", "Loaded", "Failed") and not running


def summed_up(status: AdapterStatus, replicas: list[ReplicaAdapterState]) -> AdapterStatus:
    """`status` with its replicas and the state they add up to."""
    update: dict[str, object] = {"replicas": replicas or None}
    failed = [r for r in replicas if r.state == "Failed"]
    known = [r for r in replicas if r.state != "Unknown"]
    if failed:
        first = failed[0]
        update |= {"state": "Failed", "reason": f"pod {first.pod}: {first.reason}"}
    elif known and all(r.state == "Loaded" for r in replicas):
        update |= {"state": "Loaded"}
    elif known:
        update |= {"state": "Loading"}
    else:
        update |= {"state": "Configured"}
    return status.model_copy(update=update)


def with_replicas(status: AdapterStatus, reports: list[PodReport]) -> AdapterStatus:
    """The adapter's status given every ready pod's report (one with no folder stays)."""
    if status.path is None:
        return status
    replicas = [replica_state(r, status.name, status.path) for r in reports]
    return summed_up(status, replicas)
