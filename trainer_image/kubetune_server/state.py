"""What one server app holds at run time, and the dependency that hands it to routes.

`app.py` creates a `ServerState` in `app.state.server`; the engine and batcher appear once the
model has loaded. `routes.py` asks for `Ready`, which answers 503 until then; the probes (`/readyz`
in `app.py`, `adapterz.py`) read the state themselves and answer `not_ready` until then.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from kubetune_server.adapter_config import AdapterConfigWatcher
from kubetune_server.adapter_registry import AdapterRegistry
from kubetune_server.batching import Batcher
from kubetune_server.engine import Engine
from kubetune_server.errors import ApiError
from kubetune_server.metrics import ServerMetrics
from kubetune_server.settings import ServerSettings


@dataclass
class ServerState:
    """Settings, metrics and, once loaded, the engine and its batcher."""

    settings: ServerSettings
    metrics: ServerMetrics
    engine: Engine | None = None
    batcher: Batcher | None = None
    adapters: AdapterRegistry | None = None  # named LoRA adapters (multi-LoRA servers only)
    load_error: str | None = None
    created: int = 0
    watcher: asyncio.Task[None] | None = None  # the adapter config file's watcher task
    adapter_config: AdapterConfigWatcher | None = None  # its `error` is shown at /adapterz

    @property
    def ready(self) -> bool:
        """Whether requests can be served."""
        return self.engine is not None and self.batcher is not None


@dataclass(frozen=True)
class ReadyServer:
    """A state whose engine and batcher are there (what routes work with)."""

    settings: ServerSettings
    metrics: ServerMetrics
    engine: Engine
    batcher: Batcher
    created: int
    adapters: AdapterRegistry | None = None


def server_state(request: Request) -> ServerState:
    """The app's `ServerState`."""
    state: ServerState = request.app.state.server
    return state


def not_ready(state: ServerState) -> JSONResponse | None:
    """The 503 of a probe (`/readyz`, `/adapterz`) while the model loads or after it failed."""
    if state.ready:
        return None
    reason = state.load_error or "loading the model"
    return JSONResponse({"status": "not ready", "reason": reason, "pid": os.getpid()}, 503)


def ready_server(request: Request) -> ReadyServer:
    """The loaded server, or 503 while the model loads."""
    s = server_state(request)
    if s.engine is None or s.batcher is None:
        reason = s.load_error or "the model is still loading"
        raise ApiError(503, f"Not ready: {reason}.", type_="service_unavailable", code="not_ready")
    return ReadyServer(s.settings, s.metrics, s.engine, s.batcher, s.created, s.adapters)


Ready = Annotated[ReadyServer, Depends(ready_server)]
