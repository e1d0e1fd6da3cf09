"""`create_app(settings, engine)`: the inference server's FastAPI application.

Called by `cli.py` (engine None: the model loads in a background thread at startup, so `/healthz`
answers at once and `/readyz` says 503 until the model is there) and by tests (a ready engine, or a
fake one). Holds the health, readiness and metrics endpoints; the OpenAI routes live in
`routes.py`, the adapter admin routes in `admin_routes.py`, the key-free adapter states for the
operator (`/adapterz`) in `adapterz.py`. A multi-LoRA server loads its named adapters (flags, then
`--adapter-config`, canaries included) before it reports ready; one that fails is listed as
Failed at `/v1/adapters` and `/adapterz`, and the others serve. `auth.RequestGuard` checks the API key and the body
limit before any route reads the body. A model that fails to load makes `/healthz` fail too, so the
kubelet restarts the pod.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from kubetune_server.adapter_config import AdapterConfigWatcher
from kubetune_server.adapter_registry import AdapterRegistry
from kubetune_server.adapterz import router as adapterz_router
from kubetune_server.admin_routes import router as admin_router
from kubetune_server.auth import RequestGuard
from kubetune_server.batching import Batcher
from kubetune_server.engine import Engine
from kubetune_server.errors import install_error_handlers
from kubetune_server.metrics import ServerMetrics
from kubetune_server.multi_lora import LoraSet
from kubetune_server.request_metrics import RequestMetricsMiddleware
from kubetune_server.routes import router
from kubetune_server.settings import ServerSettings
from kubetune_server.state import ServerState, not_ready, server_state

log = logging.getLogger(__name__)

Loader = Callable[[ServerSettings], Engine]

API_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/adapters"})


def load_engine(settings: ServerSettings) -> Engine:
    """Load the model `settings` describe (the default loader)."""
    from kubetune_server.loading import load_model

    return Engine(load_model(settings))


def create_app(
    settings: ServerSettings, engine: Engine | None = None, *, loader: Loader = load_engine
) -> FastAPI:
    """The server app; loads the model with `loader` at startup unless `engine` is given."""
    metrics = ServerMetrics()
    state = ServerState(settings=settings, metrics=metrics, created=int(time.time()))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(state, engine, loader))
        try:
            yield
        finally:
            loading.cancel()
            if state.watcher is not None:
                state.watcher.cancel()
            if state.batcher is not None:
                await state.batcher.stop()

    app = FastAPI(title="kubetune serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = state
    install_error_handlers(app)
    limit = settings.max_body_bytes
    app.add_middleware(RequestGuard, api_key=settings.api_key, max_body_bytes=limit)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, paths=API_PATHS)
    app.include_router(router)
    app.include_router(admin_router)
    app.include_router(adapterz_router)
    _add_health_routes(app)
    return app


async def _load(state: ServerState, engine: Engine | None, loader: Loader) -> None:
    """Load (in a thread) and start the batcher; record a failure instead of raising."""
    settings = state.settings
    try:
        ready = engine if engine is not None else await asyncio.to_thread(loader, settings)
    except Exception as err:
        log.exception("loading the model failed")
        state.load_error = f"loading the model failed: {err}"
        return
    batcher = Batcher(
        ready,
        state.metrics,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue,
        wait_ms=settings.batch_wait_ms,
    )
    batcher.start()
    if settings.multi_lora:
        await _start_adapters(state, ready, batcher)
    state.engine, state.batcher = ready, batcher
    log.info("ready: serving %s", settings.model_name)


async def _start_adapters(state: ServerState, engine: Engine, batcher: Batcher) -> None:
    """The registry, the adapters named by flags, then the config file (before readiness)."""
    settings = state.settings
    lora = engine.lora if engine.lora is not None else LoraSet(engine.loaded.model)
    engine.lora = lora
    registry = AdapterRegistry(lora, batcher.run_exclusive, settings.model_name)
    batcher.peft_name = registry.peft_name
    for name, folder in settings.adapters.items():
        await registry.load(name, folder)
    if settings.adapter_config is not None:
        watcher = AdapterConfigWatcher(settings.adapter_config, registry, settings.adapter_poll_s)
        await watcher.sync_once()
        state.adapter_config = watcher
        state.watcher = asyncio.create_task(watcher.watch())
    state.adapters = registry


def _add_health_routes(app: FastAPI) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> JSONResponse:
        state = server_state(request)
        if state.load_error:
            body = {"status": "failed", "reason": state.load_error, "pid": os.getpid()}
            return JSONResponse(body, 500)
        return JSONResponse({"status": "ok", "pid": os.getpid()})

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        state = server_state(request)
        if (waiting := not_ready(state)) is not None:
            return waiting
        body = {"status": "ready", "model": state.settings.model_name, "pid": os.getpid()}
        return JSONResponse(body)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        return Response(server_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
