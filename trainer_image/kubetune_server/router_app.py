"""`create_router_app(settings)`: the complexity router, one OpenAI-compatible endpoint in front.

Called by `router_cli.py` and tests. For each completion request it validates the body (the same
schemas as the server, so a bad request is a 400 here, not at a backend), asks `policy.decide`
for a backend, and forwards the client's original bytes. The backend's answer, streamed or not,
is passed through chunk by chunk with `x-kubetune-backend` naming who answered. When the chosen
backend refuses the connection or answers 5xx before any byte was sent, the next backend is
tried and the failure counted; a failure in the middle of a stream just ends that stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError

from kubetune_server.auth import Authorized
from kubetune_server.errors import ApiError, describe_validation, install_error_handlers
from kubetune_server.metrics import RouterMetrics
from kubetune_server.policy import Decision, decide
from kubetune_server.request_metrics import RequestMetricsMiddleware
from kubetune_server.schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from kubetune_server.settings import RouterSettings

log = logging.getLogger(__name__)

BACKEND_HEADER = "x-kubetune-backend"
PASSED_HEADERS = ("content-type", "content-encoding", "retry-after", "cache-control")
API_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models"})


class BackendFailure(Exception):
    """A backend could not answer (connection error or 5xx)."""


def create_router_app(settings: RouterSettings, client: httpx.AsyncClient | None = None) -> FastAPI:
    """The router app; it owns an `httpx.AsyncClient` unless one is given."""
    metrics = RouterMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = client is None
        app.state.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
        )
        try:
            yield
        finally:
            if own:
                await app.state.client.aclose()

    app = FastAPI(title="kubetune route", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.api_key = settings.api_key
    app.state.router = _Router(settings, metrics)
    install_error_handlers(app)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, paths=API_PATHS)
    _add_routes(app, metrics)
    return app


class _Router:
    """Decides and forwards; one per app."""

    def __init__(self, settings: RouterSettings, metrics: RouterMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.names = list(settings.backends)
        self.random = random.Random()

    def decide(self, body: dict[str, Any]) -> Decision:
        s = self.settings
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

    def order(self, first: str) -> list[str]:
        """`first`, then the other backends as configured (the fallback order)."""
        return [first, *(n for n in self.names if n != first)]

    async def forward(
        self, client: httpx.AsyncClient, request: Request, path: str, raw: bytes, first: str
    ) -> Response:
        errors: list[str] = []
        for name in self.order(first):
            try:
                upstream = await self._send(client, request, name, path, raw)
            except BackendFailure as err:
                self.metrics.failures.labels(name).inc()
                log.warning("backend %s failed: %s", name, err)
                errors.append(f"{name}: {err}")
                continue
            return _passthrough(upstream, name)
        raise ApiError(
            502,
            f"Every backend failed ({'; '.join(errors)}).",
            type_="server_error",
            code="backends_unavailable",
        )

    async def _send(
        self, client: httpx.AsyncClient, request: Request, name: str, path: str, raw: bytes
    ) -> httpx.Response:
        headers = {"content-type": "application/json"}
        auth = self.settings.backend_api_key
        if auth:
            headers["authorization"] = f"Bearer {auth}"
        elif "authorization" in request.headers:
            headers["authorization"] = request.headers["authorization"]
        url = self.settings.backends[name].rstrip("/") + path
        try:
            upstream = await client.send(
                client.build_request("POST", url, content=raw, headers=headers), stream=True
            )
        except httpx.HTTPError as err:
            raise BackendFailure(
                f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            ) from err
        if upstream.status_code >= 500:
            await upstream.aclose()
            raise BackendFailure(f"HTTP {upstream.status_code}")
        return upstream


def _passthrough(upstream: httpx.Response, name: str) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        except httpx.HTTPError as err:
            log.warning("backend %s failed mid-response: %s", name, err)
        finally:
            await upstream.aclose()

    headers = {k: v for k, v in upstream.headers.items() if k.lower() in PASSED_HEADERS}
    headers[BACKEND_HEADER] = name
    return StreamingResponse(body(), status_code=upstream.status_code, headers=headers)


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
        decision = router.decide(_parse(raw, schema))
        metrics.decisions.labels(decision.backend, decision.reason).inc()
        metrics.overhead.observe(time.perf_counter() - start)
        return await router.forward(request.app.state.client, request, path, raw, decision.backend)

    @app.post("/v1/chat/completions")
    async def chat(request: Request, _: Authorized) -> Response:
        return await route(request, "/v1/chat/completions", ChatCompletionRequest)

    @app.post("/v1/completions")
    async def completions(request: Request, _: Authorized) -> Response:
        return await route(request, "/v1/completions", CompletionRequest)

    @app.get("/v1/models")
    async def models(request: Request, _: Authorized) -> ModelList:
        router: _Router = request.app.state.router
        now = int(time.time())
        return ModelList(data=[ModelCard(id=name, created=now) for name in router.names])

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "pid": os.getpid()})

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        router: _Router = request.app.state.router
        ready = await _ready_backends(request.app.state.client, router.settings.backends)
        status = 200 if ready else 503
        body = {"status": "ready" if ready else "no backend ready", "backends": ready}
        return JSONResponse({**body, "pid": os.getpid()}, status)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def _ready_backends(client: httpx.AsyncClient, backends: dict[str, str]) -> list[str]:
    async def ready(url: str) -> bool:
        try:
            return (await client.get(url.rstrip("/") + "/readyz", timeout=2.0)).status_code == 200
        except httpx.HTTPError:
            return False

    results = await asyncio.gather(*(ready(url) for url in backends.values()))
    return [name for name, ok in zip(backends, results, strict=True) if ok]
