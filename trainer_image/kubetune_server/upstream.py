"""The router's calls to its backends: send bytes, fall back on failure, pass the answer through.

`router_app.py` calls `Upstream.forward` for each routed request. It uses aiohttp's client (C
HTTP parser, pooled keep-alive connections): against httpx it costs about a fifth of the CPU per
request, which is most of the router's added latency. Bodies are forwarded as raw bytes and
answers are not decompressed or re-encoded. A backend that refuses the connection, times out or
answers 5xx before any byte reached the client is a `BackendFailure`, and the next backend in
the fallback order is tried; a failure in the middle of a stream just ends that stream. A 429
(the backend's queue is full) also moves on to the next backend; when none can answer, the
client gets that 429 with its Retry-After rather than a 502. Any other 4xx is the request's own
fault and is passed through at once: the other backend would refuse it too. A connection that
was refused, reset or closed before an answer (a pooled keep-alive connection to a pod that is
being replaced during a roll) is retried once on the same backend first, on a new connection
that the Service sends to a live pod; generation has no side effects, so resending is safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import aiohttp
from fastapi.responses import Response, StreamingResponse

from kubetune_server.errors import ApiError

log = logging.getLogger(__name__)

BACKEND_HEADER = "x-kubetune-backend"
PASSED_HEADERS = frozenset({"content-type", "content-encoding", "retry-after", "cache-control"})
FAILURES = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class BackendFailure(Exception):
    """A backend could not answer (connection error, timeout or 5xx)."""

    def __init__(self, message: str, *, dropped: bool = False) -> None:
        super().__init__(message)
        self.dropped = dropped  # the connection failed before any answer: worth one retry


DROPPED = (aiohttp.ClientConnectionError,)  # refused, reset, server disconnected (not timeouts)


class BackendBusy(Exception):
    """A backend answered 429; `response` is that answer, read whole."""

    def __init__(self, response: Response) -> None:
        super().__init__("HTTP 429")
        self.response = response


class Upstream:
    """A pooled HTTP client for the backends; open it in the app's lifespan."""

    def __init__(self, backends: Mapping[str, str], *, timeout_s: float) -> None:
        self.backends = {name: url.rstrip("/") for name, url in backends.items()}
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, connect=5.0)
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None  # one new connection per request

    async def open(self) -> None:
        """Create the session (inside the running event loop)."""
        self._session = aiohttp.ClientSession(
            timeout=self.timeout,
            auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=1000, ttl_dns_cache=300),
        )
        self._fresh = aiohttp.ClientSession(
            timeout=self.timeout,
            auto_decompress=False,
            connector=aiohttp.TCPConnector(force_close=True, use_dns_cache=False),
        )

    async def close(self) -> None:
        """Close pooled connections."""
        for session in (self._session, self._fresh):
            if session is not None:
                await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open session."""
        assert self._session is not None, "Upstream.open() was not awaited"
        return self._session

    async def forward(
        self,
        order: Sequence[str],
        path: str,
        raw: bytes,
        headers: Mapping[str, str],
        on_failure: Callable[[str], None],
    ) -> Response:
        """Try backends in `order`; the first answer wins; a 429 if the last one standing was
        busy, else 502 when every one failed."""
        errors: list[str] = []
        busy: Response | None = None
        for name in order:
            try:
                answer = await self._send_retrying(name, path, raw, headers)
                if answer.content_type == "text/event-stream":
                    return _stream(answer, name)
                return await _whole(answer, name)
            except (BackendBusy, BackendFailure) as err:
                busy = err.response if isinstance(err, BackendBusy) else busy
                on_failure(name)
                log.warning("backend %s failed: %s", name, err)
                errors.append(f"{name}: {err}")
        if busy is not None:
            return busy
        raise ApiError(
            502,
            f"Every backend failed ({'; '.join(errors)}).",
            type_="server_error",
            code="backends_unavailable",
        )

    async def ready(self) -> list[str]:
        """Names of the backends whose /readyz (vLLM: /health, when /readyz is a 404) is 200."""

        async def one(url: str) -> bool:
            try:
                timeout = aiohttp.ClientTimeout(total=2.0)
                for path in ("/readyz", "/health"):
                    async with self.session.get(f"{url}{path}", timeout=timeout) as answer:
                        if answer.status != 404:
                            return answer.status == 200
                return False
            except FAILURES:
                return False

        results = await asyncio.gather(*(one(url) for url in self.backends.values()))
        return [name for name, ok in zip(self.backends, results, strict=True) if ok]

    async def _send_retrying(
        self, name: str, path: str, raw: bytes, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse:
        """`_send`, once more on a new connection when the first one was dropped."""
        try:
            return await self._send(name, path, raw, headers)
        except BackendFailure as err:
            if not err.dropped:
                raise
            log.info("backend %s dropped the connection (%s); retrying once", name, err)
            return await self._send(name, path, raw, headers, fresh=True)

    async def _send(
        self,
        name: str,
        path: str,
        raw: bytes,
        headers: Mapping[str, str],
        *,
        fresh: bool = False,
    ) -> aiohttp.ClientResponse:
        # fresh: a new TCP connection (closed after the answer), not one from the pool
        session = self._fresh if fresh and self._fresh is not None else self.session
        try:
            answer = await session.post(self.backends[name] + path, data=raw, headers=headers)
        except FAILURES as err:
            raise BackendFailure(_describe(err), dropped=isinstance(err, DROPPED)) from err
        if answer.status >= 500:
            answer.release()
            raise BackendFailure(f"HTTP {answer.status}")
        if answer.status == 429:
            raise BackendBusy(await _whole(answer, name))
        return answer


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _headers(answer: aiohttp.ClientResponse, name: str) -> dict[str, str]:
    headers = {k: v for k, v in answer.headers.items() if k.lower() in PASSED_HEADERS}
    headers[BACKEND_HEADER] = name
    return headers


async def _whole(answer: aiohttp.ClientResponse, name: str) -> Response:
    """A non-streamed answer, read completely first (a failure here can still fall back)."""
    try:
        content = await answer.read()
    except FAILURES as err:
        raise BackendFailure(f"{_describe(err)} while reading the answer") from err
    finally:
        answer.release()
    return Response(content, status_code=answer.status, headers=_headers(answer, name))


def _stream(answer: aiohttp.ClientResponse, name: str) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in answer.content.iter_any():
                yield chunk
        except FAILURES as err:
            log.warning("backend %s failed mid-stream: %s", name, _describe(err))
        finally:
            answer.release()

    return StreamingResponse(body(), status_code=answer.status, headers=_headers(answer, name))
