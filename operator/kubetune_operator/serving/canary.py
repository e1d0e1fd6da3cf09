"""Canary verdicts for named adapters: keep a new run on trial, promote it, or roll it back. Pure.

With `promotion.canaryPercent`, `named_adapters` puts a new FineTuneJob run that passes the
evaluation gate beside the served one as a canary (`AdapterStatus.canary`, state Running): the
servers send that share of the adapter's requests to it and count, per folder, the requests and
the ones that failed on the server. `judged` adds up every ready pod's counts (`tally`) and
decides once the canary has answered `canaryMinRequests`: an error rate higher than the served
folder's rolls it back (state RolledBack, with the figures; the run is never tried again, a newer
run is), anything else promotes it (the canary's folder becomes the served one, state Promoted
keeps the figures). A canary that fails to load on any pod is rolled back at once. The served
folder's counts run from when each pod loaded it, so they may cover more than the canary's time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubetune_api.adapter_report import path_digest
from kubetune_api.deployment import AdapterStatus, CanaryStatus
from kubetune_operator.serving.replicas import PodReport, entry_of


@dataclass
class Tally:
    """Requests and server-side failures of both folders, summed over the ready pods."""

    stable_requests: int = 0
    stable_errors: int = 0
    requests: int = 0
    errors: int = 0
    load_failures: list[str] = field(default_factory=list)  # "pod X: reason"


def tally(reports: list[PodReport], adapter: str, stable: str, canary: str) -> Tally:
    """Counts of `adapter` on every pod that serves these very folders (by digest)."""
    out = Tally()
    for report in reports:
        entry = entry_of(report, adapter)
        if entry is None:
            continue
        if entry.path_digest == path_digest(stable):
            out.stable_requests += entry.requests
            out.stable_errors += entry.errors
        trial = entry.canary
        if trial is None or trial.path_digest != path_digest(canary):
            continue
        out.requests += trial.requests
        out.errors += trial.errors
        if trial.state == "Failed":
            out.load_failures.append(f"pod {report.pod}: {trial.reason}")
    return out


def _rate(errors: int, requests: int) -> float:
    return errors / requests if requests else 0.0


def _figures(errors: int, requests: int) -> str:
    return f"{100 * _rate(errors, requests):.1f}% ({errors} of {requests})"


def judged(status: AdapterStatus, reports: list[PodReport], min_requests: int) -> AdapterStatus:
    """`status` with its running canary counted, and promoted or rolled back when decided."""
    canary = status.canary
    if canary is None or canary.state != "Running" or status.path is None:
        return status
    seen = tally(reports, status.name, status.path, canary.path)
    counted = canary.model_copy(
        update={
            "requests": seen.requests,
            "errors": seen.errors,
            "stable_requests": seen.stable_requests,
            "stable_errors": seen.stable_errors,
        }
    )
    if seen.load_failures:
        why = f"the canary failed to load on {seen.load_failures[0]}"
        return _rolled_back(status, counted, why)
    if seen.requests < min_requests:
        return status.model_copy(update={"canary": counted})
    if _rate(seen.errors, seen.requests) > _rate(seen.stable_errors, seen.stable_requests):
        why = (
            f"canary error rate {_figures(seen.errors, seen.requests)} is higher than the "
            f"served adapter's {_figures(seen.stable_errors, seen.stable_requests)}"
        )
        return _rolled_back(status, counted, why)
    return status.model_copy(
        update={
            "path": canary.path,
            "revision": canary.revision,
            "eval_loss": canary.eval_loss,
            "reason": None,
            "canary": counted.model_copy(update={"state": "Promoted"}),
        }
    )


def _rolled_back(status: AdapterStatus, canary: CanaryStatus, why: str) -> AdapterStatus:
    stopped = canary.model_copy(update={"state": "RolledBack", "reason": why})
    return status.model_copy(update={"canary": stopped, "reason": f"not promoted: {why}"})
