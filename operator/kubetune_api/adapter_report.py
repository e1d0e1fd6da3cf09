"""What a server pod says about its named adapters at `GET /adapterz`: the wire form both sides share.

`kubetune_server.adapter_variants` builds it from its adapter registry (`to_public`, served by
`kubetune_server.adapterz`); the ModelDeployment operator reads it
from every ready server pod (`kubetune_operator.serving.replica_probe`) to report per-replica
adapter state and to judge canaries. The endpoint needs no API key, so a report carries names,
states, short reasons, request counts and a digest of each folder, never the folder itself: the
operator compares the digest with that of the folder it configured (`path_digest`) to tell a
pod that serves the current folder from one that has not seen the new adapter list yet.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import Field

from kubetune_api.base import ApiModel

REASON_LIMIT = 300  # characters of a load failure's reason in a report


def path_digest(path: str) -> str:
    """A short digest of an adapter folder (or URI) as the adapter list names it."""
    return hashlib.sha256(path.encode("utf-8")).hexdigest()[:16]


class VariantReport(ApiModel):
    """One folder of a named adapter on one server: its load state and its requests."""

    state: Literal["Loading", "Loaded", "Failed"] = Field(description="Load state.")
    reason: str | None = Field(
        default=None, max_length=REASON_LIMIT, description="Why the load failed."
    )
    path_digest: str = Field(description="`path_digest` of the folder this state is about.")
    requests: int = Field(default=0, ge=0, description="Requests sent to this folder.")
    errors: int = Field(default=0, ge=0, description="Of those, the ones that failed here.")


class CanaryReport(VariantReport):
    """The canary folder of a named adapter and its share of the adapter's requests."""

    percent: float = Field(gt=0, lt=100, description="Share of requests sent to the canary.")


class AdapterReport(VariantReport):
    """One named adapter on one server: its stable folder, and its canary if it has one."""

    name: str = Field(description="The adapter's name (the request's `model`).")
    since: int = Field(default=0, ge=0, description="When the state last changed (epoch seconds).")
    canary: CanaryReport | None = Field(default=None, description="The canary, if any.")


class AdaptersReport(ApiModel):
    """The whole answer of `GET /adapterz`."""

    adapters: list[AdapterReport] = Field(default_factory=list, description="By name.")
    config_error: str | None = Field(
        default=None,
        max_length=REASON_LIMIT,
        description="Why the watched adapter list does not parse (the loaded ones keep serving).",
    )
