"""Many LoRA adapters on one INT8 base (issue 15): mixed-adapter batches against one adapter.

    PYTHONPATH=operator:trainer_image .venv/bin/python bench/serve_multi_lora.py [--requests 24]

Trains two LoRA adapters a few steps on the tiny random Qwen3 (CPU, seconds), then starts three
`kubetune serve` processes on 127.0.0.1 (int8, 1 torch thread, batch window 50 ms, max batch 8):
the first adapter merged (`--adapter DIR`, the pre-multi-LoRA path), the first adapter by name
(`--adapter a=DIR`: unmerged LoRA on the INT8 base), and both by name. Each gets the same
`--requests` concurrent greedy completions of 16 tokens (EOS ignored); on the two-adapter server
they alternate a, b and the base, so every batch mixes them. Prints generated tokens per second,
wall time and p50 latency per server, and the machine's load average.

Callers: people (the figures go to BENCHMARKS.md, "Many adapters on one base").
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

NEW_TOKENS = 16


def train_lora(model_dir: Path, out: Path, seed: int) -> Path:
    """A few steps of LoRA (rank 4) on random ids, saved as the trainer saves it."""
    import torch
    from transformers import AutoTokenizer

    from kubetune_api.finetune import MethodSpec
    from kubetune_trainer.methods import apply_method, load_base_model, save_adapter

    torch.manual_seed(seed)
    spec = MethodSpec(type="lora", rank=4, dropout=0.0)
    model, _ = apply_method(load_base_model(str(model_dir), spec, dtype=torch.float32), spec,
                            gradient_checkpointing=False)  # fmt: skip
    ids = torch.randint(0, 2000, (2, 12))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    save_adapter(model, out, tokenizer=AutoTokenizer.from_pretrained(model_dir))
    return out


def one(url: str, model: str | None, i: int) -> float:
    body: dict[str, Any] = {"prompt": f"request {i}: tell me about credit cards", "temperature": 0}
    body |= {"max_tokens": NEW_TOKENS, "ignore_eos": True}
    if model is not None:
        body["model"] = model
    start = time.perf_counter()
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
    r.raise_for_status()
    assert r.json()["usage"]["completion_tokens"] == NEW_TOKENS
    return time.perf_counter() - start


def measure(url: str, models: list[str | None], n: int) -> dict[str, float]:
    one(url, models[0], -1)  # warm up
    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        latencies = list(pool.map(lambda i: one(url, models[i % len(models)], i), range(n)))
    wall = time.perf_counter() - start
    return {"tok_s": n * NEW_TOKENS / wall, "wall": wall, "p50": statistics.median(latencies)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=24)
    args = p.parse_args()
    from kubetune_server.process import KubetuneProcess
    from kubetune_trainer.tiny_model import build_tiny_model

    root = Path(tempfile.mkdtemp(prefix="bench-multi-lora-"))
    model = build_tiny_model(root / "model", vocab="small", size="tiny")
    a, b = train_lora(model, root / "a", 0), train_lora(model, root / "b", 1)
    common = ["--model", str(model), "--threads", "1", "--max-model-len", "256"]
    common += ["--max-batch-size", "8", "--batch-wait-ms", "50", "--served-model-name", "base"]
    setups: list[tuple[str, list[str], list[str | None]]] = [
        ("adapter a merged (--adapter DIR)", ["--adapter", str(a)], [None]),
        ("adapter a by name, unmerged", ["--adapter", f"a={a}"], ["a"]),
        ("a, b and base mixed in every batch", ["--adapter", f"a={a}", "--adapter", f"b={b}"],
         ["a", "b", None]),
    ]  # fmt: skip
    print(f"$ {' '.join(sys.argv)}")
    print(f"load average before: {os.getloadavg()[0]:.1f}; {args.requests} concurrent requests "
          f"x {NEW_TOKENS} tokens, greedy")  # fmt: skip
    print("| server | tokens/s | wall | p50 latency |\n| --- | --- | --- | --- |")
    for label, extra, models in setups:
        with KubetuneProcess("serve", common + extra, ready_s=900) as proc:
            r = measure(proc.url, models, args.requests)
        print(f"| {label} | {r['tok_s']:.1f} | {r['wall']:.2f} s | {r['p50']:.2f} s |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
