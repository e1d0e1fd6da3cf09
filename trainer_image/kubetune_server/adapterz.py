"""`GET /adapterz`: the named adapters' states and counters, for the operator, without the key.

    {"adapters": [{"name", "state", "reason", "pathDigest", "since", "requests", "errors",
                   "canary": null | {"state", "reason", "pathDigest", "percent", "requests",
                                     "errors"}}],
     "configError": null | "<why the adapter config file was not applied>"}

The shape is `kubetune_api.adapter_report.AdaptersReport`, which the operator parses;
`pathDigest` is `path_digest` of the folder the state is about, so the operator can tell whether
a pod serves the folder it configured without the folder being shown.

Included by `app.py`. The path is outside `/v1/`, so `auth.RequestGuard` asks no key (the operator
polls every pod, like the kubelet polls `/readyz`), and the route takes no body. Being open, it
shows names, states, reasons (folders replaced by `<folder>`, cut to 300 characters), counts and
folder digests, never folders; `GET /v1/adapters` (keyed) shows the same with the folders. `requests` counts the
requests queued for the folder serving now (reset when the folder changes), `errors` those of them
that failed with a 5xx. A server without named adapters answers an empty list; one still loading
its model answers 503, as `/readyz` does.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kubetune_api.adapter_report import AdaptersReport
from kubetune_server.adapter_variants import public_reason
from kubetune_server.state import not_ready, server_state

router = APIRouter()


@router.get("/adapterz", include_in_schema=False)
async def adapterz(request: Request) -> JSONResponse:
    """Every named adapter's state and counters, or 503 while the model loads."""
    state = server_state(request)
    if (waiting := not_ready(state)) is not None:
        return waiting
    adapters = [r.to_public() for r in state.adapters.reports()] if state.adapters else []
    error = state.adapter_config.error if state.adapter_config is not None else None
    report = AdaptersReport(adapters=adapters, config_error=public_reason(error or ""))
    return JSONResponse(report.model_dump(mode="json", by_alias=True))
