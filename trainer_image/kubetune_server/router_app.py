"""`create_router_app(settings)`: the complexity router, one OpenAI-compatible endpoint in front.

Called by `router_cli.py` and tests. `auth.RequestGuard` checks the API key and the body limit
before a byte of the body is read. For each completion request it validates the body (the same
schemas as the server, so a bad request is a 400 here, not at a backend), asks `policy.decide`
for a backend (both in a worker thread when the body is large, so the event loop stays free),
and hands the client's original bytes to `upstream.Upstream`, which passes the answer through
(streamed or not) with `x-kubetune-backend` naming who answered, and falls back to the other
backend when the chosen one refuses, times out, answers 5xx or is busy (429).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError

from kubetune_server.auth import RequestGuard
from kubetune_server.errors import ApiError, describe_validation, install_error_handlers
from kubetune_server.metrics import RouterMetrics
from kubetune_server.policy import Decision, decide
from kubetune_server.request_metrics import RequestMetricsMiddleware
from kubetune_server.schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from kubetune_server.settings import RouterSettings
from kubetune_server.upstream import BACKEND_HEADER, Upstream

__all__ = ["BACKEND_HEADER", "create_router_app"]

API_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models"})
INLINE_BODY_BYTES = 32 * 1024  # smaller bodies are parsed and scored on the loop (microseconds)


def create_router_app(settings: RouterSettings) -> FastAPI:
    """The router app; its backend connections open and close with the app's lifespan."""
    metrics = RouterMetrics()
    upstream = Upstream(settings.backends, timeout_s=settings.timeout_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await upstream.open()
        try:
            yield
        finally:
            await upstream.close()

    app = FastAPI(title="kubetune route", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.router = _Router(settings, metrics, upstream)
    install_error_handlers(app)
    limit = settings.max_body_bytes
    app.add_middleware(RequestGuard, api_key=settings.api_key, max_body_bytes=limit)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, paths=API_PATHS)
    _add_routes(app, metrics)
    return app


class _Router:
    """Decides and forwards; one per app."""

    def __init__(
        self, settings: RouterSettings, metrics: RouterMetrics, upstream: Upstream
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.upstream = upstream
        self.names = list(settings.backends)
        self.random = random.Random()

    def decide(self, raw: bytes, schema: type[BaseModel]) -> Decision:
        """Parse and validate `raw` (400 otherwise), then pick its backend."""
        body = _parse(raw, schema)
        s = self.settings
        adapter = body.get("model")
        if isinstance(adapter, str) and adapter in s.adapter_backends:
            return Decision(s.adapter_backends[adapter], "named-adapter")
        return decide(
            body,
            backends=self.names,
            strategy=s.strategy,
            threshold=s.threshold,
            large=s.large,
            small=s.small,
            default=s.default,
            weights=s.weights,
            draw=self.random.random(),
        )

    def order(self, first: str, alone: bool = False) -> list[str]:
        """`first`, then the other backends as configured (the fallback order); `alone`: no
        fallback (a named adapter lives on one backend only)."""
        return [first] if alone else [first, *(n for n in self.names if n != first)]

    async def forward(
        self, request: Request, path: str, raw: bytes, first: str, alone: bool = False
    ) -> Response:
        headers = {"content-type": "application/json"}
        if self.settings.backend_api_key:
            headers["authorization"] = f"Bearer {self.settings.backend_api_key}"
        elif "authorization" in request.headers:
            headers["authorization"] = request.headers["authorization"]
        failed = self.metrics.failures
        return await self.upstream.forward(
            self.order(first, alone), path, raw, headers, lambda name: failed.labels(name).inc()
        )


def _parse(raw: bytes, schema: type[BaseModel]) -> dict[str, Any]:
    """The JSON body, validated by `schema`; 400 with one sentence otherwise."""
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ApiError(
            400, f"The request body is not valid JSON ({err.msg}).", code="invalid_value"
        ) from err
    except UnicodeDecodeError as err:
        raise ApiError(400, "The request body is not UTF-8 text.", code="invalid_value") from err
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_value")
    try:
        schema.model_validate(body)
    except ValidationError as err:
        raise ApiError(400, describe_validation(list(err.errors())), code="invalid_value") from err
    return body


def _add_routes(app: FastAPI, metrics: RouterMetrics) -> None:
    async def route(request: Request, path: str, schema: type[BaseModel]) -> Response:
        start = time.perf_counter()
        router: _Router = request.app.state.router
        raw = await request.body()
        if len(raw) <= INLINE_BODY_BYTES:
            decision = router.decide(raw, schema)
        else:
            decision = await asyncio.to_thread(router.decide, raw, schema)
        metrics.decisions.labels(decision.backend, decision.reason).inc()
        metrics.overhead.observe(time.perf_counter() - start)
        alone = decision.reason == "named-adapter"
        return await router.forward(request, path, raw, decision.backend, alone)

    # The two hot paths are plain Starlette routes: FastAPI's dependency and response-model
    # machinery would add about a tenth of a millisecond per request for nothing we use.
    async def chat(request: Request) -> Response:
        return await route(request, "/v1/chat/completions", ChatCompletionRequest)

    async def completions(request: Request) -> Response:
        return await route(request, "/v1/completions", CompletionRequest)

    app.router.add_route("/v1/chat/completions", chat, methods=["POST"])
    app.router.add_route("/v1/completions", completions, methods=["POST"])

    @app.get("/v1/models")
    async def models(request: Request) -> ModelList:
        router: _Router = request.app.state.router
        now = int(time.time())
        cards = [ModelCard(id=name, created=now) for name in router.names]
        adapters = router.settings.adapter_backends
        cards += [ModelCard(id=a, created=now, parent=adapters[a]) for a in sorted(adapters)]
        return ModelList(data=cards)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "pid": os.getpid()})

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        router: _Router = request.app.state.router
        ready = await router.upstream.ready()
        status = 200 if ready else 503
        body = {"status": "ready" if ready else "no backend ready", "backends": ready}
        return JSONResponse({**body, "pid": os.getpid()}, status)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
