"""A careless or hostile client, for the abuse tests and `bench/serve_abuse.py`: loopback only.

`send_big_body` streams a body of any size over a raw socket and stops as soon as the server
answers (an HTTP client would finish uploading first, which hides how early the answer came);
`RssSampler` follows a process's resident memory meanwhile; `poll_latency` times a GET in a
loop, the way a liveness probe would see the server. Every loop is bounded in count and time.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

CHUNK = 1 << 20


@dataclass(frozen=True)
class BodyProbe:
    """What came back for a big body: the status, when it came, how much had been sent."""

    status: int
    seconds: float  # from the first byte sent to the status line received
    sent_bytes: int
    body: dict[str, Any]


def send_big_body(
    url: str,
    path: str,
    size: int,
    *,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
    timeout_s: float = 30.0,
) -> BodyProbe:
    """POST `size` bytes of `{"x...` to `url + path`; stop sending once the answer starts."""
    parts = urlsplit(url)
    head = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json"]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}")
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout_s) as sock:
        start = time.perf_counter()
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sent = _stream_until_answer(sock, size, chunked, start + timeout_s)
        status_at = time.perf_counter() - start
        status, body = _read_answer(sock, start + timeout_s)
    return BodyProbe(status, status_at, sent, body)


def _stream_until_answer(sock: socket.socket, size: int, chunked: bool, deadline: float) -> int:
    """Send the body until the socket has something to read (or all is sent); bytes sent."""
    sock.setblocking(False)
    sent, pending = 0, b""
    while time.perf_counter() < deadline:
        readable, writable, _ = select.select([sock], [sock], [], 0.5)
        if readable:
            break
        if not writable:
            continue
        if not pending and sent < size:
            n = min(CHUNK, size - sent)
            piece = b'{"' + b"x" * (n - 2) if sent == 0 else b"x" * n  # never valid JSON
            sent += n
            pending = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
            if chunked and sent >= size:
                pending += b"0\r\n\r\n"
        if not pending:  # all sent: wait for the answer
            select.select([sock], [], [], max(0.0, deadline - time.perf_counter()))
            break
        try:
            pending = pending[sock.send(pending) :]
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            break  # the server closed its side: the answer may still be readable
    sock.setblocking(True)
    return sent


def _read_answer(sock: socket.socket, deadline: float) -> tuple[int, dict[str, Any]]:
    data = b""
    sock.settimeout(max(0.1, deadline - time.perf_counter()))
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head:
        return 0, {}
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        (
            int(v)
            for k, _, v in (h.partition(": ") for h in lines[1:])
            if k.lower() == "content-length"
        ),
        0,
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    try:
        body = json.loads(rest[:length]) if length else {}
    except ValueError:
        body = {}
    return int(lines[0].split()[1]), body


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid` (Linux /proc), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Samples a process's RSS every `every_s` in a thread; `growth` is peak minus start."""

    def __init__(self, pid: int, every_s: float = 0.005) -> None:
        self.pid = pid
        self.every_s = every_s
        self.start = self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_bytes(self.pid))

    @property
    def growth(self) -> int:
        """Peak RSS seen minus the RSS at the start, in bytes."""
        return self.peak - self.start

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, rss_bytes(self.pid))


def poll_latency(url: str, stop: threading.Event, *, max_s: float = 120.0) -> list[float]:
    """Seconds each GET of `url` took, one after another until `stop` is set (or `max_s`)."""
    samples: list[float] = []
    deadline = time.monotonic() + max_s
    with httpx.Client(timeout=30) as client:
        while not stop.is_set() and time.monotonic() < deadline and len(samples) < 100_000:
            start = time.perf_counter()
            client.get(url)
            samples.append(time.perf_counter() - start)
            time.sleep(0.01)
    return samples
