"""Serving benchmark: INT8 vs fp32 size and latency, batching throughput, router overhead (CPU).

    PYTHONPATH=operator:trainer_image .venv/bin/python bench/serve_latency.py [--vocab qwen3|small]

One run prints one table, with the command line and the machine's load. Three parts:

1. size and latency of one request (batch 1, 32 new tokens, greedy, EOS ignored) on a ~100M
   random Qwen3 (`build_tiny_model(size="mid")`, Qwen3 vocabulary), int8 against fp32 on the
   CPU, measured in process with the same `Engine` the server uses. INT8 here means our
   per-row int8 matmuls (kubetune_server.quantize); the baseline is fp32, not bf16 (CPUs run fp32;
   on GPUs bitsandbytes int8 is slower than bf16 at batch 1: see bench/gpu_serve.sh).
2. throughput of a real `kubetune serve --quantization int8` process over HTTP: generated tokens
   per second at concurrency 1 and 16 (dynamic batching, max batch 16); target >= 4x.
3. the router's added latency: the same tiny request sent straight to a stub backend and through
   a `kubetune route` process in front of it; p50/p99 difference (target p99 < 2 ms), plus
   the router's own pre-forwarding time from its metrics.

Callers: people, and `make bench`. `--stub-backend PORT` is internal (runs the stub backend).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

NEW_TOKENS = 32
PROMPT = "请详细说明一下信用卡最低还款额是怎么计算的，以及逾期会有什么后果。"
STUB_BODY = json.dumps(
    {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": "stub",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()


def build_model(root: Path, vocab: str) -> Path:
    """The ~100M 'mid' random Qwen3."""
    from kubetune_trainer.tiny_model import build_tiny_model, count_parameters

    out = build_tiny_model(root / f"mid-{vocab}", vocab=vocab, size="mid")  # type: ignore[arg-type]
    print(f"# model: Qwen3 mid ({vocab} vocab), {count_parameters(out) / 1e6:.1f}M parameters")
    return out


def single_request_latency(model: Path, quantization: str, runs: int) -> dict[str, float]:
    """Size and batch-1 latency of 32 new tokens, in process."""
    from kubetune_server.engine import Engine, GenerationJob
    from kubetune_server.loading import load_model
    from kubetune_server.sampling import SamplingParams
    from kubetune_server.settings import ServerSettings

    loaded = load_model(ServerSettings(model=str(model), quantization=quantization, device="cpu"))  # type: ignore[arg-type]
    engine = Engine(loaded)
    prompt = engine.chat_prompt_ids([{"role": "user", "content": PROMPT}])
    job = GenerationJob(prompt, SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True))
    engine.generate([job], lambda row, tok: False)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        engine.generate([job], lambda row, tok: False)
        times.append(time.perf_counter() - start)
    return {"size_mb": loaded.size_after / 1e6, "latency_s": statistics.median(times)}


def throughput(url: str, concurrency: int, requests: int) -> float:
    """Generated tokens per second with `concurrency` clients in flight."""
    import httpx

    body = {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": NEW_TOKENS,
        "ignore_eos": True,
        "temperature": 0,
    }
    with httpx.Client(base_url=url, timeout=600) as client:
        client.post("/v1/chat/completions", json=body)  # warm-up

        def one(_: int) -> int:
            response = client.post("/v1/chat/completions", json=body)
            return int(response.json()["usage"]["completion_tokens"])

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            tokens = sum(pool.map(one, range(requests)))
        return tokens / (time.perf_counter() - start)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def router_overhead(n: int) -> dict[str, float]:
    """p50/p99 straight to a stub backend and through the router (interleaved, so both see the
    same machine load), the router's pre-forwarding time and its CPU per request."""
    import httpx

    from kubetune_server.process import KubetuneProcess, free_port

    port = free_port()
    stub = _start_stub(port)
    backend = f"http://127.0.0.1:{port}"
    args = ["--backend", f"large={backend}", "--backend", f"small={backend}"]
    try:
        with (
            KubetuneProcess("route", [*args, "--log-level", "warning"]) as router,
            httpx.Client(timeout=30) as client,
        ):
            assert router.proc is not None
            body = {"messages": [{"role": "user", "content": "Prove step by step that 1+1=2."}]}
            urls = [f"{backend}/v1/chat/completions", f"{router.url}/v1/chat/completions"]
            for _ in range(50):  # warm-up
                for url in urls:
                    client.post(url, json=body)
            samples: list[list[float]] = [[], []]
            cpu_before = process_cpu_s(router.proc.pid)
            for _ in range(n):
                for i, url in enumerate(urls):
                    start = time.perf_counter()
                    client.post(url, json=body)
                    samples[i].append(time.perf_counter() - start)
            cpu = (process_cpu_s(router.proc.pid) - cpu_before) / n
            own = _router_own_time(client.get(f"{router.url}/metrics").text)
    finally:
        stub.terminate()
        stub.wait(10)
    (d50, d99), (r50, r99) = percentiles(samples[0]), percentiles(samples[1])
    timings = {"direct_p50": d50, "direct_p99": d99, "routed_p50": r50, "routed_p99": r99}
    return {**timings, "router_cpu": cpu, **own}


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _router_own_time(metrics: str) -> dict[str, float]:
    total = count = 0.0
    for line in metrics.splitlines():
        if line.startswith("kubetune_router_overhead_seconds_sum"):
            total = float(line.split()[-1])
        elif line.startswith("kubetune_router_overhead_seconds_count"):
            count = float(line.split()[-1])
    return {"router_own_mean": total / count if count else float("nan")}


def _start_stub(port: int) -> subprocess.Popen[bytes]:
    import httpx

    proc = subprocess.Popen([sys.executable, __file__, "--stub-backend", str(port)])
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the stub backend did not start")


def run_stub_backend(port: int) -> None:
    """A backend that answers every POST at once with a fixed chat completion (no model)."""
    import uvicorn

    async def app(scope: dict, receive: Callable, send: Callable) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": STUB_BODY})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", choices=["qwen3", "small"], default="qwen3")
    parser.add_argument("--runs", type=int, default=5, help="latency runs per precision")
    parser.add_argument("--router-requests", type=int, default=500)
    parser.add_argument("--router-only", action="store_true", help="part 3 only (no model)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, here and in the server (default 1: steady on a shared machine)",
    )
    parser.add_argument("--stub-backend", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stub_backend is not None:
        run_stub_backend(args.stub_backend)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    print("$ " + shlex.join([Path(sys.executable).name, *sys.argv]))
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    rows: list[Row] = []
    if not args.router_only:
        rows += model_rows(*model_parts(args.vocab, args.runs, args.threads))
    rows += router_rows(router_overhead(args.router_requests))
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>18}  {note}")
    print(f"# load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


def model_parts(
    vocab: str, runs: int, threads: int
) -> tuple[dict[str, float], dict[str, float], float, float]:
    """Parts 1 and 2: (fp32, int8, tokens/s at concurrency 1, at 16)."""
    from kubetune_server.process import KubetuneProcess

    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp), vocab)
        fp32 = single_request_latency(model, "none", runs)
        int8 = single_request_latency(model, "int8", runs)
        serve = ["--model", str(model), "--quantization", "int8", "--max-batch-size", "16"]
        serve += ["--max-new-tokens", str(NEW_TOKENS), "--batch-wait-ms", "10"]
        serve += ["--threads", str(threads)]
        with KubetuneProcess("serve", [*serve, "--log-level", "warning"]) as server:
            c1 = throughput(server.url, 1, 6)
            c16 = throughput(server.url, 16, 32)
    return fp32, int8, c1, c16


Row = tuple[str, str, str]


def model_rows(fp32: dict[str, float], int8: dict[str, float], c1: float, c16: float) -> list[Row]:
    ms = 1000.0
    size_ratio = int8["size_mb"] / fp32["size_mb"]
    speedup = fp32["latency_s"] / int8["latency_s"]
    return [
        ("model size, fp32", f"{fp32['size_mb']:.1f} MB", ""),
        ("model size, int8", f"{int8['size_mb']:.1f} MB", f"{size_ratio:.2f}x of fp32"),
        (f"latency batch 1, {NEW_TOKENS} tokens, fp32", f"{fp32['latency_s'] * ms:.0f} ms", ""),
        (
            f"latency batch 1, {NEW_TOKENS} tokens, int8",
            f"{int8['latency_s'] * ms:.0f} ms",
            f"{speedup:.2f}x faster than fp32",
        ),
        ("throughput int8, concurrency 1", f"{c1:.1f} tok/s", ""),
        (
            "throughput int8, concurrency 16",
            f"{c16:.1f} tok/s",
            f"{c16 / c1:.2f}x of concurrency 1 (target >= 4x)",
        ),
    ]


def router_rows(r: dict[str, float]) -> list[Row]:
    ms = 1000.0
    added50 = (r["routed_p50"] - r["direct_p50"]) * ms
    added99 = (r["routed_p99"] - r["direct_p99"]) * ms
    return [
        (
            "stub backend direct p50 / p99",
            f"{r['direct_p50'] * ms:.2f} / {r['direct_p99'] * ms:.2f} ms",
            "",
        ),
        (
            "through router p50 / p99",
            f"{r['routed_p50'] * ms:.2f} / {r['routed_p99'] * ms:.2f} ms",
            "",
        ),
        ("router added p50 / p99", f"{added50:.2f} / {added99:.2f} ms", "target p99 < 2 ms"),
        ("router own time (parse+score), mean", f"{r['router_own_mean'] * 1e6:.0f} us", ""),
        (
            "router CPU per request (all of it)",
            f"{r['router_cpu'] * ms:.2f} ms",
            "load-independent",
        ),
    ]


if __name__ == "__main__":
    sys.exit(main())
