"""`kubetune serve` against a hostile client (issue 15), over real HTTP on 127.0.0.1.

One server of the tiny random Qwen3, with an API key and a 40 MB body limit (so a 30 MB prompt
gets past the body limit to the character cap). Huge bodies are streamed by
`kubetune_server.probes.send_big_body`, which stops sending once the server answers, while
`RssSampler` follows the server's memory; `/healthz` is polled while the server refuses or
tokenizes a huge prompt, as the kubelet's liveness probe would (timeout 5 s; we ask for 1 s).
The same figures, printed: `bench/serve_abuse.py`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubetune_server.probes import RssSampler, poll_latency, send_big_body
from kubetune_server.process import KubetuneProcess

pytestmark = pytest.mark.integration

KEY = "abuse-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMIT = 40_000_000
MB = 1_000_000


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[KubetuneProcess]:
    args = ["--model", str(tiny_model_dir), "--max-model-len", "256", "--threads", "1"]
    args += ["--max-new-tokens", "8", "--max-body-bytes", str(LIMIT)]
    with KubetuneProcess("serve", args, env={"KUBETUNE_API_KEY": KEY}) as proc:
        yield proc


def pid(server: KubetuneProcess) -> int:
    assert server.proc is not None
    return server.proc.pid


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_unauthenticated_100mb_body_is_401_within_a_second(
    server: KubetuneProcess, chunked: bool
) -> None:
    with RssSampler(pid(server)) as rss:
        probe = send_big_body(server.url, "/v1/chat/completions", 100 * MB, chunked=chunked)
    assert probe.status == 401 and probe.body["error"]["code"] == "invalid_api_key"
    assert probe.seconds < 1, probe
    assert rss.growth < 50 * MB, f"server memory grew {rss.growth / MB:.0f} MB"


def test_a_body_over_the_limit_with_the_key_is_413_within_a_second(
    server: KubetuneProcess,
) -> None:
    with RssSampler(pid(server)) as rss:
        probe = send_big_body(server.url, "/v1/completions", 100 * MB, headers=AUTH)
    assert probe.status == 413 and "--max-body-bytes" in probe.body["error"]["message"]
    assert probe.seconds < 1, probe
    assert rss.growth < 50 * MB, f"server memory grew {rss.growth / MB:.0f} MB"


def test_broken_json_without_the_key_is_401(server: KubetuneProcess) -> None:
    response = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json", timeout=10)
    assert response.status_code == 401


def during(
    server: KubetuneProcess, request: Callable[[], httpx.Response]
) -> tuple[Any, list[float]]:
    """Run `request` while polling /healthz; (its response, the health latencies)."""
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        health = pool.submit(poll_latency, f"{server.url}/healthz", stop)
        try:
            response = request()
        finally:
            stop.set()
        return response, health.result()


def big_prompt(server: KubetuneProcess, text: str) -> Callable[[], httpx.Response]:
    body = json.dumps({"prompt": text, "max_tokens": 1}).encode()
    headers = {**AUTH, "content-type": "application/json"}
    url = f"{server.url}/v1/completions"
    return lambda: httpx.post(url, content=body, headers=headers, timeout=300)


def test_healthz_answers_while_a_30mb_prompt_is_refused(server: KubetuneProcess) -> None:
    response, latencies = during(server, big_prompt(server, "x" * 30 * MB))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "prompt_too_long"
    assert max(latencies) < 1, f"slowest /healthz: {max(latencies):.2f} s"


def test_healthz_answers_while_a_long_prompt_is_tokenized(server: KubetuneProcess) -> None:
    # Just under the default 500,000-character cap: seconds of tokenizing, in a thread.
    response, latencies = during(server, big_prompt(server, "hello world 信用卡 " * 31_000))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert len(latencies) > 3 and max(latencies) < 1, f"slowest: {max(latencies):.2f} s"
