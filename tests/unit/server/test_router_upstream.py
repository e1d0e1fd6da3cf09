"""The router's fallback and guard over real HTTP, against stub backends (no model, seconds).

Each stub answers every POST with a fixed status and counts what it received, so the tests see
exactly which backend was asked: a 429 moves on to the other backend, any other 4xx does not,
and the router refuses unauthenticated or oversized bodies before reading them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from kubetune_server.router_app import create_router_app
from kubetune_server.settings import RouterSettings
from unit.server.http import raw_post, serve

KEY = "router-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
OK = {"id": "x", "object": "chat.completion", "created": 0, "model": "stub", "choices": []}
HARD = "Prove step by step that sqrt(2) is irrational, and derive the formula for x^2 = 2."


class Stub:
    """An ASGI backend answering `status` to every POST; `seen` counts the requests."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.seen = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.seen += 1
        body = OK if self.status == 200 else {"error": {"message": f"stub {self.status}"}}
        headers = [(b"content-type", b"application/json"), (b"retry-after", b"7")]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


@pytest.fixture()
def stubs() -> Iterator[tuple[dict[str, Stub], dict[str, str]]]:
    found = {"large": Stub(200), "small": Stub(200)}
    with ExitStack() as stack:
        urls = {name: stack.enter_context(serve(stub)) for name, stub in found.items()}
        yield found, urls


def router(urls: dict[str, str], **kw: Any) -> Any:
    return serve(create_router_app(RouterSettings(backends=urls, api_key=KEY, **kw)))


def ask(url: str, content: str = HARD) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": content}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=30)


def failures(url: str, backend: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f'kubetune_router_backend_failures_total{{backend="{backend}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_busy_backend_falls_back_to_the_other(stubs: Any) -> None:
    found, urls = stubs
    found["large"].status = 429
    with router(urls) as url:
        answer = ask(url)
        assert answer.status_code == 200 and answer.headers["x-kubetune-backend"] == "small"
        assert (found["large"].seen, found["small"].seen) == (1, 1)
        assert failures(url, "large") == 1


def test_when_every_backend_is_busy_the_client_gets_429_with_retry_after(stubs: Any) -> None:
    found, urls = stubs
    found["large"].status = found["small"].status = 429
    with router(urls) as url:
        answer = ask(url)
    assert answer.status_code == 429 and answer.headers["retry-after"] == "7"
    assert answer.headers["x-kubetune-backend"] == "small"
    assert (found["large"].seen, found["small"].seen) == (1, 1)


def test_a_4xx_from_the_backend_is_not_retried_elsewhere(stubs: Any) -> None:
    found, urls = stubs
    found["large"].status = 400
    with router(urls) as url:
        answer = ask(url)
        assert answer.status_code == 400 and answer.json()["error"]["message"] == "stub 400"
        assert (found["large"].seen, found["small"].seen) == (1, 0)
        assert failures(url, "large") == 0


def test_a_large_body_is_scored_in_a_thread_and_routed_alike(stubs: Any) -> None:
    _, urls = stubs  # the body is over INLINE_BODY_BYTES: parsed and scored in a thread
    with router(urls) as url:
        assert ask(url, HARD + " x" * 40_000).headers["x-kubetune-backend"] == "large"
        assert ask(url, "hi").headers["x-kubetune-backend"] == "small"


def test_the_router_checks_the_key_and_the_size_before_reading(stubs: Any) -> None:
    found, urls = stubs
    with router(urls, max_body_bytes=4096) as url:
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000"
        status, error, seconds = raw_post(url, head, b"{" * 1024)
        assert (status, error["code"]) == (401, "invalid_api_key") and seconds < 1
        status, error, seconds = raw_post(url, f"{head}\r\nAuthorization: Bearer {KEY}")
        assert (status, error["code"]) == (413, "request_too_large") and seconds < 1
        anonymous = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", timeout=10)
        assert anonymous.status_code == 401
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
        assert httpx.get(f"{url}/v1/models", headers=AUTH, timeout=10).status_code == 200
    assert found["large"].seen == found["small"].seen == 0
