"""The checks every request passes before any work: the API key, then the body limit.

`app.py` and `router_app.py` install `RequestGuard`, a pure ASGI middleware, so both run on the
headers alone, before a byte of the body is read or parsed: a request to `/v1/...` without the
key (when one is set) is a 401, and a `Content-Length` over `max_body_bytes` is a 413, whatever
the body holds. A body without a length (chunked) is read here, chunk by chunk, and refused with
413 as soon as it passes the limit; a body within it is handed on to the app unchanged. Health
and metrics paths need no key. Key comparison is constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kubetune_server.errors import ApiError, error_response

API_PREFIX = "/v1/"


def key_error(headers: Iterable[tuple[bytes, bytes]], expected: str | None) -> ApiError | None:
    """A 401 unless the headers carry `Authorization: Bearer <expected>` (None: no key needed)."""
    if not expected:
        return None
    given = next((v for k, v in headers if k.lower() == b"authorization"), b"")
    scheme, _, token = given.decode("latin-1").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        return None
    return ApiError(
        401,
        "Missing or invalid API key: send it as 'Authorization: Bearer <key>'.",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def too_large(limit: int, size: str) -> ApiError:
    """The 413 naming the limit and the setting that raises it."""
    return ApiError(
        413,
        f"The request body is {size}; this server accepts at most {limit} bytes "
        "(--max-body-bytes).",
        code="request_too_large",
    )


def declared_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The `Content-Length` header as a number (None when absent or not a number)."""
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.strip().isdigit() else None
    return None


class RequestGuard:
    """API key (for `/v1/` paths), then the body limit, then the app."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        if scope.get("path", "").startswith(API_PREFIX):
            refused = key_error(headers, self.api_key)
            if refused is not None:
                await error_response(refused)(scope, receive, send)
                return
        length = declared_length(headers)
        if length is not None and length > self.max_body_bytes:
            await error_response(too_large(self.max_body_bytes, f"{length} bytes"))(
                scope, receive, send
            )
            return
        if length is not None:  # the HTTP parser delivers exactly that many bytes
            await self.app(scope, receive, send)
            return
        body = await _read_bounded(receive, self.max_body_bytes)
        if body is None:
            refused = too_large(self.max_body_bytes, f"over {self.max_body_bytes} bytes")
            await error_response(refused)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


async def _read_bounded(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes `limit` bytes (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client left: the app answers what came, to nobody
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over `body` once, then whatever the connection says next."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
