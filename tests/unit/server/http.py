"""Real HTTP for the server unit tests: an app under uvicorn on a free loopback port, raw posts.

`serve` runs any ASGI app (the server's or the router's) in a thread; `raw_post` sends a request
head, and maybe part of a body, on a raw socket, to time answers that must not wait for a body.
Used by `test_app` and `test_router_upstream`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run `app` with uvicorn on a free port in a thread; yield its URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def raw_post(url: str, head: str, body: bytes = b"") -> tuple[int, dict[str, Any], float]:
    """Send a request head (and maybe part of a body) on a raw socket; status, error, seconds."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        start = time.perf_counter()
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        elapsed = time.perf_counter() - start
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), json.loads(payload)["error"], elapsed
