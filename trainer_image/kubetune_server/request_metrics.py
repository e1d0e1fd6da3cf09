"""ASGI middleware counting requests by endpoint and status and timing them to the last byte.

Installed by `app.py` and `router_app.py`. It wraps `send`, so a streamed response is timed until
its final chunk, not only until its headers. Paths outside `paths` are counted as `other`, which
keeps label cardinality bounded whatever clients send.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _HasRequestMetrics(Protocol):
    requests: Any
    latency: Any


class RequestMetricsMiddleware:
    """Counts `requests{endpoint,status}` and observes `latency{endpoint}`."""

    def __init__(self, app: ASGIApp, *, metrics: _HasRequestMetrics, paths: Iterable[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in self.paths else "other"
        start = time.perf_counter()
        status = 500

        async def wrapped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
