"""Prometheus metrics of the server and of the router, each on its own registry.

`app.py` creates one `ServerMetrics` per app (so tests can build many apps in one process) and
serves it on `GET /metrics`; the middleware counts requests by endpoint and status and times
them, routes add token counts, and `batching.py` records batch sizes and queue depth.
`router_app.py` does the same with `RouterMetrics` (decisions and backend failures).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05)


class ServerMetrics:
    """The inference server's metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kubetune_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "kubetune_request_latency_seconds",
            "Time to the full response (streams: to the last byte)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "kubetune_prompt_tokens", "Prompt tokens processed", registry=r
        )
        self.completion_tokens = Counter(
            "kubetune_completion_tokens", "Completion tokens generated", registry=r
        )
        self.batch_size = Histogram(
            "kubetune_batch_size", "Requests generated together", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("kubetune_queue_depth", "Requests waiting for a batch", registry=r)
        self.rejected = Counter(
            "kubetune_rejected", "Requests refused because the queue was full", registry=r
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class RouterMetrics:
    """The router's metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kubetune_router_requests",
            "Routed requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "kubetune_router_request_latency_seconds",
            "Time to the full response, backend included",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "kubetune_router_decisions",
            "Routing decisions by backend and reason",
            ["backend", "reason"],
            registry=r,
        )
        self.failures = Counter(
            "kubetune_router_backend_failures",
            "Backend calls that failed (connection error or 5xx) and were retried elsewhere",
            ["backend"],
            registry=r,
        )
        self.overhead = Histogram(
            "kubetune_router_overhead_seconds",
            "Time spent in the router before the backend call (parse, score, pick)",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
