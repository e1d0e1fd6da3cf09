"""`kubetune route` for real: two `kubetune serve` processes behind router processes.

Backends: `large` and `small` serve the same tiny Qwen3 under different names (the response's
`model` and the `x-kubetune-backend` header say who answered); `broken` is a real server whose
model cannot load, so it answers 503; `dead` is a port nobody listens on. Routers: a healthy one,
one whose large backend is dead (connection refused) and one whose large backend is broken (5xx).
A request the backends refuse (4xx) is the client's answer, never retried on the other model.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubetune_server.process import KubetuneProcess, free_port

pytestmark = pytest.mark.integration

EASY = "如何申请信用卡？"
HARD = "Prove step by step that sqrt(2) is irrational, and derive the formula for x^2 = 2."


def serve(model: Path, name: str) -> KubetuneProcess:
    args = ["--model", str(model), "--served-model-name", name, "--max-new-tokens", "16"]
    return KubetuneProcess("serve", [*args, "--threads", "1", "--max-model-len", "512"])


def route(large: str, small: str) -> KubetuneProcess:
    return KubetuneProcess("route", ["--backend", f"large={large}", "--backend", f"small={small}"])


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path) -> Iterator[dict[str, KubetuneProcess]]:
    procs = {
        "large": serve(tiny_model_dir, "large-model"),
        "small": serve(tiny_model_dir, "small-model"),
        "broken": serve(tiny_model_dir / "missing", "broken-model"),
    }
    try:
        for proc in procs.values():
            proc.launch()
        procs["large"].wait_ready()
        procs["small"].wait_ready()
        procs["broken"].wait_ready("/healthz", statuses=(500,))  # up, but its model failed
        small = procs["small"].url
        procs["router"] = route(procs["large"].url, small)
        procs["router_dead"] = route(f"http://127.0.0.1:{free_port()}", small)
        procs["router_5xx"] = route(procs["broken"].url, small)
        for name in ("router", "router_dead", "router_5xx"):
            procs[name].start()
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def chat(content: str, **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 8, **fields}


def post(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def metric_value(url: str, prefix: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_requests_go_to_the_backend_their_complexity_asks_for(
    stack: dict[str, KubetuneProcess],
) -> None:
    url = stack["router"].url
    easy, hard = post(url, chat(EASY)), post(url, chat(HARD))
    assert easy.status_code == hard.status_code == 200
    assert easy.headers["x-kubetune-backend"] == "small" and easy.json()["model"] == "small-model"
    assert hard.headers["x-kubetune-backend"] == "large" and hard.json()["model"] == "large-model"
    forced = post(url, chat(EASY, model="large"))
    assert forced.headers["x-kubetune-backend"] == "large"
    completion = httpx.post(
        f"{url}/v1/completions", json={"prompt": HARD, "max_tokens": 4}, timeout=60
    )
    assert completion.headers["x-kubetune-backend"] == "large"
    assert (
        metric_value(url, 'kubetune_router_decisions_total{backend="large",reason="complexity"}')
        == 2
    )
    assert (
        metric_value(url, 'kubetune_router_decisions_total{backend="small",reason="complexity"}')
        == 1
    )
    assert metric_value(url, 'kubetune_router_decisions_total{backend="large",reason="model"}') == 1


def test_streams_pass_through_the_router(stack: dict[str, KubetuneProcess]) -> None:
    body = chat(HARD, stream=True, temperature=0)
    with httpx.stream(
        "POST", f"{stack['router'].url}/v1/chat/completions", json=body, timeout=60
    ) as routed:
        assert routed.headers["x-kubetune-backend"] == "large"
        assert routed.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in routed.iter_lines() if line]
    direct = post(stack["large"].url, {**body, "stream": False}).json()
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert text == direct["choices"][0]["message"]["content"]


@pytest.mark.parametrize(("router", "why"), [("router_dead", "refused"), ("router_5xx", "503")])
def test_a_failing_backend_falls_back_and_is_counted(
    stack: dict[str, KubetuneProcess], router: str, why: str
) -> None:
    url = stack[router].url
    response = post(url, chat(HARD))
    assert response.status_code == 200, (why, response.text)
    assert response.headers["x-kubetune-backend"] == "small"
    assert response.json()["model"] == "small-model"
    streamed = httpx.post(f"{url}/v1/chat/completions", json=chat(HARD, stream=True), timeout=60)
    assert streamed.headers["x-kubetune-backend"] == "small"
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert metric_value(url, 'kubetune_router_backend_failures_total{backend="large"}') == 2
    assert (
        metric_value(url, 'kubetune_router_decisions_total{backend="large",reason="complexity"}')
        == 2
    )


def test_the_router_rejects_bad_input_itself_and_lists_backends(
    stack: dict[str, KubetuneProcess],
) -> None:
    url = stack["router"].url
    bad = httpx.post(f"{url}/v1/chat/completions", content=b"{", timeout=10)
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]
    role = post(url, {"messages": [{"role": "robot", "content": "x"}]})
    assert role.status_code == 400 and "role" in role.json()["error"]["message"]
    models = httpx.get(f"{url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["large", "small"]
    ready = httpx.get(f"{url}/readyz", timeout=10).json()
    assert ready["backends"] == ["large", "small"]


def test_calibrate_prints_the_threshold_table(
    stack: dict[str, KubetuneProcess], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubetune_server.router_cli import main

    eval_path = tmp_path / "eval.jsonl"
    rows = [
        {"input": EASY, "target": "您可通过银行官网申请。"},
        {"input": HARD, "target": "Assume sqrt(2) = p/q in lowest terms."},
        {"input": "为什么账单会有利息？请分析原因。", "target": "因为未全额还款。"},
    ]
    eval_path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), "utf-8")
    args = ["calibrate", "--backend", f"large={stack['large'].url}"]
    args += [
        "--backend",
        f"small={stack['small'].url}",
        "--eval",
        str(eval_path),
        "--max-tokens",
        "8",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("threshold  share_large  quality(F1)")
    assert "<- picked" in out and "pick: " in out
    # large and small are the same model here, so nothing needs the large one.
    assert "send everything to small" in out


def backend_requests(url: str, status: int) -> float:
    prefix = f'kubetune_requests_total{{endpoint="/v1/chat/completions",status="{status}"}}'
    return metric_value(url, prefix)


def test_a_poisoned_request_through_the_router_fails_alone_and_is_not_retried(
    stack: dict[str, KubetuneProcess],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    url = stack["router"].url
    good = [chat(EASY), chat(HARD), chat("What is the annual fee?")]
    poisoned = chat(EASY, seed=2**70, temperature=1e-45)
    with ThreadPoolExecutor(4) as pool:
        *served, refused = pool.map(lambda b: post(url, b), [*good, poisoned])
    assert [a.status_code for a in served] == [200, 200, 200]
    assert refused.status_code == 400
    assert refused.json()["error"]["message"].startswith("temperature: must be 0 (greedy)")
    assert metric_value(url, "kubetune_router_backend_failures_total") == 0


def test_a_4xx_from_the_chosen_backend_is_passed_through_not_retried(
    stack: dict[str, KubetuneProcess],
) -> None:
    # Valid for the router, too long for the backends' 512-token context: small says 400.
    url, large = stack["router"].url, stack["large"].url
    large_before = backend_requests(large, 400)
    small_before = backend_requests(stack["small"].url, 400)
    answer = post(url, chat("信用卡" * 800))  # ~830 tokens
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "context_length_exceeded"
    assert answer.headers["x-kubetune-backend"] == "small"
    assert backend_requests(stack["small"].url, 400) == small_before + 1
    assert backend_requests(large, 400) == large_before  # never tried on the other model
    assert metric_value(url, 'kubetune_router_backend_failures_total{backend="small"}') == 0


class DroppingProxy:
    """A TCP forwarder to a real server that, while `drop_next` > 0, closes each new connection
    after reading the request, without answering: what a connection to a pod being replaced
    does during a roll. Other connections are forwarded both ways."""

    def __init__(self, target: str) -> None:
        import socket
        import threading

        host, _, port = target.removeprefix("http://").partition(":")
        self.target, self.drop_next, self.dropped = (host, int(port)), 0, 0
        self.open: list[Any] = []  # forwarded client sockets
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def drop(self, count: int) -> None:
        """Close the pooled connections now and drop the next `count` new ones."""
        self.drop_next = count
        for sock in self.open:
            self._close(sock)
        self.open.clear()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.drop_next > 0:
                self.drop_next -= 1
                self.dropped += 1
                client.recv(65536)
                client.close()
                continue
            self.open.append(client)
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @classmethod
    def _pipe(cls, src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            cls._close(src)
            cls._close(dst)

    @staticmethod
    def _close(sock: Any) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(2)

    def close(self) -> None:
        self.listener.close()


def test_a_dropped_connection_is_retried_once_on_the_same_backend(
    stack: dict[str, KubetuneProcess],
) -> None:
    """The chosen backend drops the connection before answering (a pod leaving during a roll):
    the router resends once on a new connection and the same model answers; no fallback."""
    proxy = DroppingProxy(stack["large"].url)
    router = route(proxy.url, stack["small"].url)
    try:
        router.start()
        assert post(router.url, chat(HARD)).headers["x-kubetune-backend"] == "large"
        proxy.drop(1)
        response = post(router.url, chat(HARD))
        assert response.status_code == 200, response.text
        assert response.headers["x-kubetune-backend"] == "large"
        assert proxy.dropped == 1
        assert metric_value(router.url, "kubetune_router_backend_failures_total") == 0
        proxy.drop(2)  # the retry is dropped too: then the other model answers
        response = post(router.url, chat(HARD))
        assert response.status_code == 200 and response.headers["x-kubetune-backend"] == "small"
        assert proxy.dropped == 3
    finally:
        router.stop()
        proxy.close()
