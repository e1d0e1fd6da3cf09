"""The two variants of a named adapter (stable, canary): states, counters, the pick, the reports.

`adapter_registry.py` keeps one `AdapterState` per name, and a `CanaryState` when the adapter
config file gives the name a canary; each loaded folder has its own `VariantCounts`, fresh when
that folder is loaded, so a new stable folder (or canary) starts from zero. The completion routes
get an `AdapterRoute` from the registry (`pick_variant`: canary with probability percent/100,
independently per request), count the request once it is queued, and count an error when it ends
in a 5xx while generating. `AdapterReport` is what `GET /v1/adapters` (keyed: with folders) and
`GET /adapterz` (key-free: names, states, reasons, counts and folder digests, in the wire form
`kubetune_api.adapter_report` shares with the operator) show. Knows nothing about peft.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from kubetune_api.adapter_report import REASON_LIMIT, CanaryReport, path_digest
from kubetune_api.adapter_report import AdapterReport as WireReport

State = Literal["Loading", "Loaded", "Failed"]
Variant = Literal["stable", "canary"]
Draw = Callable[[], float]  # a uniform number in [0, 1), e.g. random.random

VARIANT_HEADER = "x-kubetune-adapter-variant"
MAX_PUBLIC_REASON = REASON_LIMIT  # characters of a reason shown without the key


@dataclass
class VariantCounts:
    """Requests queued for one loaded folder, and how many ended in a server-side error."""

    requests: int = 0
    errors: int = 0

    def record_request(self) -> None:
        self.requests += 1

    def record_failure(self, status: int) -> None:
        """A queued request failed with `status`; only a 5xx is the server's (an error)."""
        if status >= 500:
            self.errors += 1


@dataclass(frozen=True)
class Served:
    """A variant that takes requests: its peft adapter and its counters."""

    peft: str
    counts: VariantCounts = field(default_factory=VariantCounts)


@dataclass(frozen=True)
class AdapterRoute:
    """Where one request for a named adapter goes: the name, the variant, its counters."""

    name: str
    variant: Variant
    counts: VariantCounts


def pick_variant(percent: float | None, draw: Draw = random.random) -> Variant:
    """`canary` with probability percent/100 (None: no servable canary), else `stable`."""
    return "canary" if percent is not None and draw() < percent / 100 else "stable"


class VariantTable:
    """Per name, the peft adapters serving the stable and the canary variant, and the canary's
    state; the registry changes it, requests read it (`route`, `peft_name`)."""

    def __init__(self, draw: Draw = random.random) -> None:
        self.stable: dict[str, Served] = {}
        self.canary: dict[str, Served] = {}
        self.canaries: dict[str, CanaryState] = {}  # also while loading or failed
        self._draw = draw

    def route(self, name: str) -> AdapterRoute:
        """The variant of servable adapter `name` one request goes to (a fresh draw each)."""
        canary = self.canary.get(name)
        percent = self.canaries[name].percent if canary is not None else None
        if pick_variant(percent, self._draw) == "canary" and canary is not None:
            return AdapterRoute(name, "canary", canary.counts)
        return AdapterRoute(name, "stable", self.stable[name].counts)

    def peft_name(self, name: str, canary: bool) -> str | None:
        """The peft adapter for `name` now (a canary gone since the pick: the stable one)."""
        served = (self.canary.get(name) if canary else None) or self.stable.get(name)
        return served.peft if served is not None else None

    def report(self, state: AdapterState) -> AdapterReport:
        """`state` with its counters and canary."""
        stable, canary = self.stable.get(state.name), self.canary.get(state.name)
        return AdapterReport(
            state,
            stable.counts if stable is not None else VariantCounts(),
            self.canaries.get(state.name),
            canary.counts if canary is not None else None,
        )

    @staticmethod
    def point(table: dict[str, Served], name: str, new: Served | None) -> Served | None:
        """Point `table[name]` at `new` (None: remove) in one step; what it held, to unload."""
        previous = table.pop(name, None) if new is None else table.get(name)
        if new is not None:
            table[name] = new
        if previous is None or (new is not None and previous.peft == new.peft):
            return None
        return previous


@dataclass(frozen=True)
class AdapterState:
    """The stable variant of one named adapter as clients and the operator see it."""

    name: str
    path: str  # the folder asked for last
    state: State
    reason: str = ""
    serving_path: str | None = None  # the folder requests go to now (None: not servable)
    since: float = 0.0


@dataclass(frozen=True)
class CanaryState:
    """The canary of one named adapter: its folder, share of traffic and load state."""

    path: str
    percent: float
    state: State
    reason: str = ""
    since: float = 0.0


@dataclass(frozen=True)
class AdapterReport:
    """One named adapter with both variants' states and counters."""

    stable: AdapterState
    counts: VariantCounts
    canary: CanaryState | None = None
    canary_counts: VariantCounts | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire form of GET /v1/adapters (behind the key: folders included)."""
        s, canary = self.stable, self.canary
        return {
            "name": s.name,
            "path": s.path,
            "state": s.state,
            "reason": s.reason or None,
            "servingPath": s.serving_path,
            "since": int(s.since),
            **_counts(self.counts),
            "canary": None if canary is None else {
                "path": canary.path,
                "state": canary.state,
                "reason": canary.reason or None,
                "percent": canary.percent,
                "since": int(canary.since),
                **_counts(self.canary_counts),
            },
        }  # fmt: skip

    def to_public(self) -> WireReport:
        """The entry of GET /adapterz (no key): names, states, reasons, counts and a digest of
        each folder (`kubetune_api.adapter_report`), never the folders themselves."""
        s, canary, counts = self.stable, self.canary, self.canary_counts or VariantCounts()
        return WireReport(
            name=s.name,
            state=s.state,
            reason=public_reason(s.reason, s.path, s.serving_path),
            path_digest=path_digest(s.path),
            since=int(s.since),
            requests=self.counts.requests,
            errors=self.counts.errors,
            canary=None if canary is None else CanaryReport(
                state=canary.state,
                reason=public_reason(canary.reason, canary.path),
                path_digest=path_digest(canary.path),
                percent=canary.percent,
                requests=counts.requests,
                errors=counts.errors,
            ),
        )  # fmt: skip


def public_reason(reason: str, *folders: str | None) -> str | None:
    """`reason` with the adapter's folders replaced by `<folder>`, cut to MAX_PUBLIC_REASON."""
    if not reason:
        return None
    for folder in sorted({f.rstrip("/") for f in folders if f} - {""}, key=len, reverse=True):
        reason = reason.replace(folder, "<folder>")
    return reason if len(reason) <= MAX_PUBLIC_REASON else reason[: MAX_PUBLIC_REASON - 3] + "..."


def _counts(counts: VariantCounts | None) -> dict[str, int]:
    counts = counts or VariantCounts()
    return {"requests": counts.requests, "errors": counts.errors}
