"""The adapter admin API of a multi-LoRA server: list, load and unload named adapters.

    GET    /v1/adapters          every named adapter: state (Loading, Loaded, Failed), reason,
                                 folder, request and error counts, and its canary (if any)
    POST   /v1/adapters          {"name": ..., "path": ...}: load (or swap) an adapter; answers
                                 when it is Loaded (200) or Failed (422, with the reason)
    DELETE /v1/adapters/{name}   unload it

Included by `app.py`. The paths sit under `/v1/`, so `auth.RequestGuard` checks the API key
(and the body limit) before the body is read. Loading and unloading need
`--enable-adapter-admin`; listing works on every multi-LoRA server (the operator and people read
it; `/adapterz` shows the same without the key, and without folders). Adapters from
`--adapter-config` are managed by that file (canaries too): the admin API can load others.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field

from kubetune_server.adapter_registry import AdapterRegistry
from kubetune_server.errors import ApiError
from kubetune_server.schemas import StrictRequest
from kubetune_server.settings import ADAPTER_NAME
from kubetune_server.state import Ready, ReadyServer

router = APIRouter()


class LoadAdapterRequest(StrictRequest):
    """`POST /v1/adapters`."""

    name: str = Field(pattern=ADAPTER_NAME.pattern)
    path: str = Field(min_length=1, max_length=4096)


def _registry(server: ReadyServer, *, change: bool = False) -> AdapterRegistry:
    if server.adapters is None:
        raise ApiError(
            404,
            "This server serves one model without named adapters; start it with "
            "--adapter NAME=DIR, --adapter-config or --enable-adapter-admin.",
            code="adapters_disabled",
        )
    if change and not server.settings.enable_adapter_admin:
        raise ApiError(
            403,
            "Loading and unloading adapters over HTTP is off; start the server with "
            "--enable-adapter-admin.",
            type_="permission_error",
            code="adapter_admin_disabled",
        )
    return server.adapters


@router.get("/v1/adapters")
async def list_adapters(server: Ready) -> dict[str, Any]:
    """Every named adapter and its state."""
    registry = _registry(server)
    return {"object": "list", "data": [r.to_json() for r in registry.reports()]}


@router.post("/v1/adapters")
async def load_adapter(body: LoadAdapterRequest, server: Ready) -> dict[str, Any]:
    """Load `body.path` as `body.name`; 422 naming the reason when it cannot be served."""
    registry = _registry(server, change=True)
    try:
        state = await registry.load(body.name, body.path)
    except ValueError as err:
        raise ApiError(400, f"{err}.") from err
    if state.state == "Failed":
        raise ApiError(422, f"Adapter {body.name!r} failed to load: {state.reason}.",
                       code="adapter_load_failed")  # fmt: skip
    report = registry.report(body.name)
    assert report is not None  # nothing ran between the load and here (no await)
    return report.to_json()


@router.delete("/v1/adapters/{name}")
async def unload_adapter(name: str, server: Ready) -> dict[str, Any]:
    """Unload adapter `name`."""
    registry = _registry(server, change=True)
    if not await registry.unload(name):
        raise ApiError(404, f"No adapter named {name!r} is loaded.", code="model_not_found")
    return {"name": name, "deleted": True}
