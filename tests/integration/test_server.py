"""`kubetune serve` for real: a tiny Qwen3 with a LoRA adapter trained here, over real HTTP.

Three server processes share the module: int8 (the default) and fp32 ("none"), both batching up
to 8 requests, and a one-request-at-a-time fp32 server with a one-slot queue for the 429 case.
The adapter is trained by `kubetune_trainer.train.fit` to memorise two answers, so a correct
merge shows as the memorised answer coming back. A poisoned request (issue 15) fails alone:
over HTTP it is refused at validation, and in the batcher (skipping validation) by itself.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubetune_server.process import KubetuneProcess

pytestmark = pytest.mark.integration

KEY = "integration-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PAIRS = [
    ("如何申请信用卡？", "您可通过银行官网或手机APP申请。"),
    ("What is the annual fee?", "No annual fee in the first year."),
]
PROMPTS = [
    "如何申请信用卡？",
    "What is the annual fee?",
    "信用卡丢了怎么办？",
    "Can I pay in installments?",
    "账单日是哪天？",
    "How do I raise my credit limit?",
    "hi",
    "请详细说明一下最低还款额是怎么计算的，以及逾期会有什么后果。",
]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter trained (CPU, seconds) to answer PAIRS."""
    from kubetune_api.trainer_config import parse_trainer_config
    from kubetune_trainer.train import RunOptions, fit

    tmp = tmp_path_factory.mktemp("lora")
    train = tmp / "train.jsonl"
    rows = [json.dumps({"input": i, "target": t}, ensure_ascii=False) for i, t in PAIRS]
    train.write_text("\n".join(rows) + "\n", encoding="utf-8")
    raw = {
        "model": {"name": str(tiny_model_dir)},
        "dataset": {"train": {"path": str(train)}},
        "method": {"type": "lora", "rank": 8, "alpha": 16, "dropout": 0.0},
        "training": {
            "epochs": 40,
            "microBatchSize": 2,
            "learningRate": 1e-2,
            "precision": "fp32",
            "gradientCheckpointing": False,
            "warmupRatio": 0.0,
        },
        "output": {"path": str(tmp / "out")},
    }
    fit(parse_trainer_config(raw), RunOptions(device="cpu"))
    return tmp / "out" / "adapter"


def serve_args(model: Path, adapter: Path, quantization: str, **flags: Any) -> list[str]:
    args = ["--model", str(model), "--adapter", str(adapter), "--quantization", quantization]
    args += ["--max-new-tokens", "48", "--max-model-len", "256", "--threads", "1"]
    for name, value in flags.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path, adapter_dir: Path) -> Iterator[dict[str, KubetuneProcess]]:
    env = {"KUBETUNE_API_KEY": KEY}
    procs = {
        "int8": KubetuneProcess(
            "serve", serve_args(tiny_model_dir, adapter_dir, "int8", batch_wait_ms=50), env=env
        ),
        "none": KubetuneProcess(
            "serve", serve_args(tiny_model_dir, adapter_dir, "none", batch_wait_ms=50), env=env
        ),
        "tight": KubetuneProcess(
            "serve",
            serve_args(
                tiny_model_dir,
                adapter_dir,
                "none",
                max_batch_size=1,
                max_queue=1,
                batch_wait_ms=0,
                max_new_tokens=4000,
                max_model_len=4096,
            ),
            env=env,
        ),
    }
    try:
        for proc in procs.values():
            proc.launch()
        for proc in procs.values():
            proc.wait_ready()
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def client(servers: dict[str, KubetuneProcess], name: str) -> httpx.Client:
    return httpx.Client(base_url=servers[name].url, headers=AUTH, timeout=120)


def chat(content: str, **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "temperature": 0, **fields}


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_the_merged_adapter_answers_as_trained(
    servers: dict[str, KubetuneProcess], quantization: str
) -> None:
    with client(servers, quantization) as c:
        for question, answer in PAIRS:
            body = c.post("/v1/chat/completions", json=chat(question)).json()
            assert body["choices"][0]["message"]["content"] == answer, body
            assert body["choices"][0]["finish_reason"] == "stop"


def test_startup_logs_the_size_before_and_after(servers: dict[str, KubetuneProcess]) -> None:
    sizes = {}
    for name in ("int8", "none"):
        log = servers[name].log_tail(20_000)
        found = re.search(r"model size: .* \(float32\) -> .*, ([\d.]+)x", log)
        assert found, log
        sizes[name] = float(found[1])
    assert sizes["int8"] < 0.3 and sizes["none"] == 1.0


def test_completions_and_models(servers: dict[str, KubetuneProcess]) -> None:
    with client(servers, "int8") as c:
        models = c.get("/v1/models").json()
        assert models["data"][0]["id"] == "adapter"
        body = c.post(
            "/v1/completions", json={"prompt": "User: hello\nAssistant:", "max_tokens": 1000}
        ).json()
        assert body["object"] == "text_completion"
        assert 1 <= body["usage"]["completion_tokens"] <= 48  # capped by --max-new-tokens
        assert body["usage"]["prompt_tokens"] > 3


def test_stream_carries_the_same_text_as_one_body(servers: dict[str, KubetuneProcess]) -> None:
    request = chat(PROMPTS[7], max_tokens=32)
    with client(servers, "int8") as c:
        whole = c.post("/v1/chat/completions", json=request).json()
        with c.stream("POST", "/v1/chat/completions", json={**request, "stream": True}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert text == whole["choices"][0]["message"]["content"]
    assert events[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_concurrent_requests_are_batched_with_identical_tokens(
    servers: dict[str, KubetuneProcess], quantization: str
) -> None:
    def ask(c: httpx.Client, prompt: str) -> list[int]:
        body = c.post(
            "/v1/chat/completions", json=chat(prompt, max_tokens=24, return_token_ids=True)
        ).json()
        return list(body["choices"][0]["token_ids"])

    with client(servers, quantization) as c:
        alone = [ask(c, p) for p in PROMPTS]
        batches_before = batch_count(c)
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            together = list(pool.map(lambda p: ask(c, p), PROMPTS))
        batches = batch_count(c) - batches_before
    assert batches < len(PROMPTS), "the concurrent requests were not batched"
    assert together == alone


def batch_count(c: httpx.Client) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith("kubetune_batch_size_count "):
            return float(line.split()[1])
    raise AssertionError("no kubetune_batch_size_count")


def test_sampling_with_a_seed_is_reproducible(servers: dict[str, KubetuneProcess]) -> None:
    request = chat(PROMPTS[6], temperature=1.0, top_p=0.9, seed=7, max_tokens=16)
    with client(servers, "int8") as c:
        first = c.post("/v1/chat/completions", json=request).json()["choices"][0]["message"]
        again = c.post("/v1/chat/completions", json=request).json()["choices"][0]["message"]
    assert first == again


def test_bad_requests_and_missing_key(servers: dict[str, KubetuneProcess]) -> None:
    with client(servers, "int8") as c:
        long_prompt = c.post("/v1/completions", json={"prompt": "信用卡" * 300})
        assert long_prompt.status_code == 400
        assert long_prompt.json()["error"]["code"] == "context_length_exceeded"
        role = c.post(
            "/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]}
        )
        assert role.status_code == 400 and "role" in role.json()["error"]["message"]
        broken = c.post(
            "/v1/chat/completions",
            content=b'{"messages": [',
            headers={"content-type": "application/json"},
        )
        assert broken.status_code == 400 and "JSON" in broken.json()["error"]["message"]
    with httpx.Client(base_url=servers["int8"].url, timeout=30) as anonymous:
        assert anonymous.post("/v1/chat/completions", json=chat("hi")).status_code == 401
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").status_code == 200


def test_a_full_queue_answers_429_and_the_server_keeps_serving(
    servers: dict[str, KubetuneProcess],
) -> None:
    # ~4000 tokens: seconds of generation; leaving the stream early cancels the rest.
    long_request = {"prompt": "x", "max_tokens": 4000, "ignore_eos": True, "stream": True}
    with client(servers, "tight") as c, ThreadPoolExecutor(2) as pool:
        with c.stream("POST", "/v1/completions", json=long_request) as running:
            assert running.status_code == 200, running.read()
            lines = running.iter_lines()  # keep a reference: dropping it closes the stream
            next(lines)  # the first request is generating now
            queued = pool.submit(c.post, "/v1/completions", json={"prompt": "y", "max_tokens": 2})
            wait_queue_depth(c, 1.0)
            refused = c.post("/v1/completions", json={"prompt": "z", "max_tokens": 2})
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_exceeded"
        assert queued.result().status_code == 200
        assert c.post("/v1/completions", json={"prompt": "z", "max_tokens": 2}).status_code == 200


def wait_queue_depth(c: httpx.Client, value: float) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for line in c.get("/metrics").text.splitlines():
            if line.startswith("kubetune_queue_depth ") and float(line.split()[1]) == value:
                return
        time.sleep(0.02)
    text = c.get("/metrics").text
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("kubetune_") and "_created" not in line
    ]
    raise AssertionError(f"queue depth never reached {value}\n" + "\n".join(lines))


POISON = {"seed": 2**70, "temperature": 1e-45}


def test_a_poisoned_request_fails_alone_and_its_batch_mates_are_served(
    servers: dict[str, KubetuneProcess],
) -> None:
    def ask(c: httpx.Client, body: dict[str, Any]) -> httpx.Response:
        return c.post("/v1/chat/completions", json=body)

    good = [chat(p, max_tokens=12, return_token_ids=True) for p in PROMPTS[:3]]
    with client(servers, "int8") as c:
        alone = [ask(c, b).json()["choices"][0]["token_ids"] for b in good]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda b: ask(c, b), [*good, chat(PROMPTS[3], **POISON)]))
        seed_alone = ask(c, chat(PROMPTS[3], seed=2**70)).json()["error"]["message"]
    *served, poisoned = answers
    assert [a.status_code for a in served] == [200, 200, 200], [a.text for a in served]
    assert [a.json()["choices"][0]["token_ids"] for a in served] == alone
    assert poisoned.status_code == 400
    # pydantic reports the first bad field in declaration order: temperature, then seed
    message = poisoned.json()["error"]["message"]
    assert message == "temperature: must be 0 (greedy) or at least 0.01, got 1e-45.", message
    assert seed_alone == (
        "seed: Input should be less than or equal to 18446744073709551615, "
        "got 1180591620717411303424."
    ), seed_alone


def test_the_batcher_isolates_poison_that_skipped_validation(tiny_model_dir: Path) -> None:
    """The real engine, with parameters no route would let through: each fails by itself."""
    import asyncio

    from kubetune_server.batching import Batcher, Event, Ticket
    from kubetune_server.engine import Engine, GenerationJob
    from kubetune_server.loading import load_model
    from kubetune_server.metrics import ServerMetrics
    from kubetune_server.sampling import SamplingParams
    from kubetune_server.settings import ServerSettings

    engine = Engine(load_model(ServerSettings(model=str(tiny_model_dir), device="cpu")))
    prompts = [engine.text_prompt_ids(p) for p in PROMPTS[:5]]
    params = [
        SamplingParams(max_new_tokens=8, ignore_eos=True),
        SamplingParams(max_new_tokens=8, ignore_eos=True, temperature=0.8, seed=5),
        SamplingParams(max_new_tokens=8, ignore_eos=True, temperature=1.0, top_p=0.9, seed=6),
        SamplingParams(max_new_tokens=8, seed=2**70),
        SamplingParams(max_new_tokens=8, temperature=1e-45, seed=1),
    ]
    jobs = [GenerationJob(p, s) for p, s in zip(prompts, params, strict=True)]

    async def run(batch: list[GenerationJob]) -> list[list[Event]]:
        batcher = Batcher(engine, ServerMetrics(), max_batch_size=8, max_queue=8, wait_ms=100)
        tickets = [batcher.submit(j) for j in batch]
        batcher.start()

        async def events(t: Ticket) -> list[Event]:
            seen = [await t.events.get()]
            while seen[-1].kind == "text":
                seen.append(await t.events.get())
            return seen

        try:
            return await asyncio.wait_for(asyncio.gather(*(events(t) for t in tickets)), 120)
        finally:
            await batcher.stop()

    alone = [asyncio.run(run([j]))[0] for j in jobs[:3]]
    together = asyncio.run(run(jobs))
    assert together[:3] == alone  # the same events, text and finish, as alone
    assert all(seen[-1].kind == "done" for seen in alone)
    bad_seed, bad_temperature = together[3][-1], together[4][-1]
    assert (bad_seed.kind, bad_seed.status, bad_seed.code) == (
        "error",
        400,
        "invalid_sampling_params",
    )
    assert "seed must fit in 64 bits" in bad_seed.text
    assert bad_temperature.status == 400
    assert "temperature 1e-45 makes the probabilities not finite" in bad_temperature.text
