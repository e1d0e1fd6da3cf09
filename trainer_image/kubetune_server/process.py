"""Run `kubetune serve` / `kubetune route` as a child process on a free port, until ready.

Used by the integration tests and `bench/serve_latency.py`, which need real servers over real
HTTP. `KubetuneProcess` picks a free loopback port, starts the `kubetune` dispatcher with the
current interpreter (source roots on PYTHONPATH), polls `/readyz`, and stops the child (SIGTERM,
then SIGKILL) on exit. The child's output goes to a log file whose tail is shown on failure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now, never the same twice in this process."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def source_roots() -> list[str]:
    """The folders holding kubetune_server and kubetune_cli (for the child's PYTHONPATH)."""
    roots: list[str] = []
    for package in ("kubetune_server", "kubetune_cli"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            root = str(Path(spec.origin).parent.parent)
            if root not in roots:
                roots.append(root)
    return roots


class KubetuneProcess:
    """`kubetune <command> ... --host 127.0.0.1 --port P`, started and awaited.

    `host` and `port` pin the address (another loopback address, a pod's port), for tests that
    stand in for several pods with the same container port.
    """

    def __init__(
        self,
        command: str,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        ready_s: float = 180,
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.url = f"http://{host}:{self.port}"
        self._argv = [sys.executable, "-m", "kubetune_cli.main", command, *args]
        self._argv += ["--host", host, "--port", str(self.port)]
        self._env = {**os.environ, **(env or {})}
        self._env["PYTHONPATH"] = os.pathsep.join(
            [*source_roots(), self._env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
        self._ready_s = ready_s
        fd, log_path = tempfile.mkstemp(prefix=f"kubetune-{command}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> KubetuneProcess:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the child and wait until it is ready."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the child without waiting (start several, then `wait_ready` each)."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self._argv, env=self._env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, path: str = "/readyz", statuses: tuple[int, ...] = (200,)) -> None:
        """Poll `path` until it answers one of `statuses`; raise with the log tail otherwise."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + self._ready_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self._argv[3]} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = httpx.get(f"{self.url}{path}", timeout=2)
                # the pid proves it is our child answering, not another process on the port
                if response.status_code in statuses and response.json().get("pid") == self.proc.pid:
                    return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self._argv[3]} not ready in {self._ready_s}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the child's output."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
