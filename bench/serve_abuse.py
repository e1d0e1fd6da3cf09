"""Serving under abuse (issue 15): what a hostile or careless client costs the server (CPU).

    PYTHONPATH=operator:trainer_image .venv/bin/python bench/serve_abuse.py

One run prints one table, with the command line and the machine's load. Everything stays on
127.0.0.1 and every loop is bounded in count and time. Three parts:

1. router scoring time of a 64k-character prompt, now and with the code-detection regex the
   router used before (kept below as the baseline): a run of `x`, a run of newlines (baseline
   at 8k characters only: at 64k it takes minutes) and ordinary text.
2. a `kubetune serve` process of the tiny random Qwen3 (API key set, 40 MB body limit so a 30 MB
   prompt reaches the character cap): 100 MB bodies without the key and past the limit with it
   (time to the answer, bytes sent by then, server memory growth), broken JSON without the key,
   and `/healthz` p50/max latency while a 30 MB prompt is refused and while a 496k-character
   prompt is tokenized (and refused: it is longer than the context).
3. a poisoned batch: three good requests and one with `seed: 2**70, temperature: 1e-45`, sent
   together straight to the server and through a `kubetune route` in front of it.

Callers: people (the figures go to BENCHMARKS.md, "Serving under abuse").
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MB = 1_000_000
KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY_LIMIT = 40 * MB
Row = tuple[str, str, str]

# The router's code detection before issue 15 (quadratic on a long word or a run of newlines).
QUADRATIC_CODE = re.compile(
    r"```|^\s*(def|class|import|from \S+ import|function|public|#include|SELECT|for\s*\(|if\s*\()"
    r"|\w+\([^)]*\)\s*[{;:]|=>|::|</?\w+>",
    re.IGNORECASE | re.MULTILINE,
)


@contextmanager
def baseline_policy() -> Iterator[None]:
    """The policy as it was: the quadratic code regex, one regex search per reasoning cue."""
    from kubetune_server import policy

    saved = policy._CODE, policy._has_call, policy._cue_count
    policy._CODE = QUADRATIC_CODE
    policy._has_call = lambda text: False  # part of QUADRATIC_CODE
    policy._cue_count = lambda text: sum(1 for p in policy._CUE_PATTERNS if p.search(text))
    try:
        yield
    finally:
        policy._CODE, policy._has_call, policy._cue_count = saved


def score_seconds(text: str, runs: int = 3) -> float:
    from kubetune_server.policy import score_request

    body = {"messages": [{"role": "user", "content": text}]}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        score_request(body)
        times.append(time.perf_counter() - start)
    return min(times)


def scoring_rows() -> list[Row]:
    ordinary = ("Explain the annual fee and how interest is charged on a late payment. " * 1000)[
        :65_536
    ]
    cases = [("x" * 65_536, "64k x", 65_536), ("\n" * 65_536, "64k newlines", 8_192)]
    cases.append((ordinary, "64k ordinary text", 65_536))
    rows: list[Row] = []
    for text, name, baseline_chars in cases:
        now = score_seconds(text)
        with baseline_policy():
            before = score_seconds(text[:baseline_chars], runs=1)
        where = "" if baseline_chars == len(text) else f" (before: at {baseline_chars // 1024}k)"
        note = f"before {before * 1000:.1f} ms{where}; target < 50 ms"
        rows.append((f"router scoring, {name}", f"{now * 1000:.1f} ms", note))
    return rows


def abuse_rows(server: Any) -> list[Row]:
    from kubetune_server.probes import RssSampler, send_big_body

    rows: list[Row] = []
    cases = [
        ("100 MB, no key, Content-Length", "/v1/chat/completions", {}, False),
        ("100 MB, no key, chunked", "/v1/chat/completions", {}, True),
        ("100 MB, key, Content-Length", "/v1/completions", AUTH, False),
        ("100 MB, key, chunked (read to the limit)", "/v1/completions", AUTH, True),
    ]
    for name, path, headers, chunked in cases:
        with RssSampler(server.proc.pid) as rss:
            probe = send_big_body(server.url, path, 100 * MB, headers=headers, chunked=chunked)
        value = f"{probe.status} in {probe.seconds * 1000:.0f} ms"
        note = f"{probe.sent_bytes / MB:.0f} MB sent by then; server RSS +{rss.growth / MB:.1f} MB"
        rows.append((name, value, note))
    import httpx

    broken = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json", timeout=10)
    rows.append(("`{not json`, no key", str(broken.status_code), "401 before parsing"))
    return rows


def health_rows(server: Any) -> list[Row]:
    cases = [
        ("30 MB prompt (refused: --max-prompt-chars)", "x" * 30 * MB),
        ("496k-char prompt (tokenized, then context)", "hello world 信用卡 " * 31_000),
    ]
    rows: list[Row] = []
    for name, text in cases:
        status, took, latencies = _health_during(server.url, text)
        p50, worst = statistics.median(latencies), max(latencies)
        rows.append(
            (
                f"/healthz p50 / max during {name}",
                f"{p50 * 1000:.1f} / {worst * 1000:.0f} ms",
                f"the prompt: {status} after {took:.2f} s; {len(latencies)} probes; target < 1 s",
            )
        )
    return rows


def _health_during(url: str, text: str) -> tuple[int, float, list[float]]:
    import httpx

    from kubetune_server.probes import poll_latency

    body = json.dumps({"prompt": text, "max_tokens": 1}).encode()
    headers = {**AUTH, "content-type": "application/json"}
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        health = pool.submit(poll_latency, f"{url}/healthz", stop)
        time.sleep(0.2)
        start = time.perf_counter()
        try:
            response = httpx.post(
                f"{url}/v1/completions", content=body, headers=headers, timeout=300
            )
        finally:
            took = time.perf_counter() - start
            time.sleep(0.2)
            stop.set()
        return response.status_code, took, health.result()


def poisoned_rows(server_url: str, router_url: str) -> list[Row]:
    import httpx

    good = ["如何申请信用卡？", "What is the annual fee?", "Prove step by step that 1+1=2."]
    bodies: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": q}], "max_tokens": 8} for q in good
    ]
    bodies.append({**bodies[0], "seed": 2**70, "temperature": 1e-45})
    rows: list[Row] = []
    for name, url in (("direct", server_url), ("through the router", router_url)):
        with httpx.Client(base_url=url, headers=AUTH, timeout=120) as c, ThreadPoolExecutor(4) as p:
            answers = list(p.map(lambda b: c.post("/v1/chat/completions", json=b), bodies))
        codes = " ".join(str(a.status_code) for a in answers)
        message = answers[-1].json()["error"]["message"]
        rows.append((f"poisoned batch, {name}", codes, f"the poisoned one: {message[:60]}..."))
    metrics = httpx.get(f"{router_url}/metrics", timeout=10).text
    retried = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("kubetune_router_backend_failures_total{")
    )
    rows.append(("router retries of the poisoned request", f"{retried:.0f}", "a 4xx is final"))
    return rows


def server_parts() -> list[Row]:
    from kubetune_server.process import KubetuneProcess
    from kubetune_trainer.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "tiny", vocab="small", size="tiny")
        args = ["--model", str(model), "--max-model-len", "256", "--threads", "1"]
        args += ["--max-new-tokens", "8", "--max-body-bytes", str(BODY_LIMIT)]
        args += ["--batch-wait-ms", "50", "--log-level", "warning"]
        env = {"KUBETUNE_API_KEY": KEY}
        with KubetuneProcess("serve", args, env=env) as server:
            rows = abuse_rows(server) + health_rows(server)
            backends = ["--backend", f"large={server.url}", "--backend", f"small={server.url}"]
            with KubetuneProcess("route", [*backends, "--log-level", "warning"], env=env) as router:
                rows += poisoned_rows(server.url, router.url)
    return rows


def load() -> str:
    return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


def main() -> int:
    print("$ " + shlex.join([Path(sys.executable).name, *sys.argv]))
    print(f"# load average {load()}")
    rows = scoring_rows() + server_parts()
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>22}  {note}")
    print(f"# load average at the end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
