"""The server app over real HTTP (uvicorn in a thread) with a fake engine: no model, seconds.

Covers what does not need real weights: readiness while loading, API key (checked before the
body is read), validation errors (sampling fields included), limits (body size, prompt
characters, context, max_tokens cap, full queue -> 429), the SSE format, stops, metrics. The
real model is served in tests/integration/test_server.py and test_server_abuse.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from kubetune_server.app import create_app
from kubetune_server.engine import GenerationJob
from kubetune_server.settings import ServerSettings
from unit.server.http import raw_post, serve

KEY = "s3cret-token"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json"}


class ByteTokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class FakeEngine:
    """Answers 'abcabc...' one byte per token; can be held at a gate or made to fail."""

    def __init__(self, context_length: int = 64) -> None:
        self.tokenizer = ByteTokenizer()
        self.context_length = context_length
        self.loaded = SimpleNamespace(default_temperature=0.0, default_top_p=1.0)
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False
        self.template_kwargs: list[dict[str, Any]] = []
        self.batches: list[int] = []
        self.tokenized = 0

    def chat_prompt_ids(
        self, messages: list[dict[str, str]], template_kwargs: dict[str, Any] | None = None
    ) -> list[int]:
        self.template_kwargs.append({"enable_thinking": False, **(template_kwargs or {})})
        self.tokenized += 1
        return list("".join(f"{m['role']}:{m['content']}|" for m in messages).encode())

    def text_prompt_ids(self, prompt: str) -> list[int]:
        self.tokenized += 1
        return list(prompt.encode())

    def max_new_tokens_for(self, prompt_len: int, requested: int) -> int:
        return max(0, min(requested, self.context_length - prompt_len))

    def generate(
        self,
        jobs: list[GenerationJob],
        emit: Callable[[int, int], bool],
        samplers: Any = None,
        adapters: Any = None,
    ) -> list[str]:
        self.gate.wait(30)
        if self.fail:
            raise RuntimeError("boom")
        self.batches.append(len(jobs))
        reasons = ["length"] * len(jobs)
        for row, job in enumerate(jobs):
            for step in range(job.params.max_new_tokens):
                if emit(row, b"abc"[step % 3]):
                    reasons[row] = "stop"
                    break
        return reasons


def settings(**kw: Any) -> ServerSettings:
    return ServerSettings(model="fake", served_model_name="fake-model", api_key=KEY, **kw)


@pytest.fixture()
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture()
def client(engine: FakeEngine) -> Iterator[httpx.Client]:
    app = create_app(settings(max_new_tokens=8, max_queue=4, max_batch_size=4), engine)
    with serve(app) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as c:
        wait_ready(c)
        yield c


def wait_ready(c: httpx.Client) -> None:
    for _ in range(200):
        if c.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("never ready")


def chat(content: str = "hi", **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **fields}


def test_chat_completion_body_and_usage(client: httpx.Client) -> None:
    body = client.post("/v1/chat/completions", json=chat(max_tokens=5)).json()
    assert body["object"] == "chat.completion" and body["model"] == "fake-model"
    assert body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "abcab"}
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13}


def test_max_tokens_is_capped_by_max_new_tokens(client: httpx.Client) -> None:
    body = client.post("/v1/chat/completions", json=chat(max_tokens=1000)).json()
    assert body["usage"]["completion_tokens"] == 8
    default = client.post("/v1/completions", json={"prompt": "x"}).json()
    assert (
        default["usage"]["completion_tokens"] == 8 and default["choices"][0]["text"] == "abcabcab"
    )


def test_stop_sequences_and_token_ids(client: httpx.Client) -> None:
    body = client.post(
        "/v1/completions", json={"prompt": "x", "stop": ["ca"], "return_token_ids": True}
    ).json()
    choice = body["choices"][0]
    assert choice["text"] == "ab" and choice["finish_reason"] == "stop"
    assert choice["token_ids"] == [97, 98, 99, 97]


def test_thinking_is_off_unless_the_request_asks(client: httpx.Client, engine: FakeEngine) -> None:
    client.post("/v1/chat/completions", json=chat(max_tokens=1))
    client.post(
        "/v1/chat/completions",
        json=chat(max_tokens=1, chat_template_kwargs={"enable_thinking": True}),
    )
    assert [k["enable_thinking"] for k in engine.template_kwargs] == [False, True]


def test_streamed_chat_follows_openai_chunks(client: httpx.Client) -> None:
    request = chat(max_tokens=4, stream=True, stream_options={"include_usage": True})
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert len({e["id"] for e in events}) == 1
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "abca"
    assert events[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length"}
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 4


def test_streamed_completion(client: httpx.Client) -> None:
    with client.stream(
        "POST", "/v1/completions", json={"prompt": "x", "max_tokens": 3, "stream": True}
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert "".join(e["choices"][0]["text"] for e in events) == "abc"
    assert events[-1]["choices"][0]["finish_reason"] == "length" and lines[-1] == "data: [DONE]"


def test_models_lists_the_served_name(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["fake-model"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b"{}", "messages: field required"),
        (
            json.dumps(
                chat(role="x") | {"messages": [{"role": "wizard", "content": "x"}]}
            ).encode(),
            "messages.0.role",
        ),
        (json.dumps(chat(temperature="hot")).encode(), "temperature"),
        (json.dumps(chat(temperature=5)).encode(), "temperature"),
        (json.dumps(chat(temperature=1e-45)).encode(), "temperature: must be 0 (greedy) or at"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "temperature"),
        (json.dumps(chat(seed=2**70)).encode(), "seed: Input should be less than or equal"),
        (json.dumps(chat(seed=-(2**63) - 1)).encode(), "seed"),
        (json.dumps(chat(top_p=0)).encode(), "top_p"),
        (json.dumps(chat(stop="s" * 1001)).encode(), "at most 1000 characters, got 1001"),
        (json.dumps(chat(max_tokens=0)).encode(), "max_tokens"),
        (json.dumps(chat(stream="yes")).encode(), "stream"),
        (json.dumps(chat(n=2)).encode(), "n:"),
        (json.dumps(chat(stop=["a", "b", "c", "d", "e"])).encode(), "at most 4 stop"),
        (json.dumps({"messages": []}).encode(), "messages"),
    ],
)
def test_bad_requests_get_400_with_one_sentence(
    client: httpx.Client, content: bytes, fragment: str
) -> None:
    response = client.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"
    assert error["message"].endswith(".") and error["message"].count(". ") == 0


def test_empty_prompt_is_400(client: httpx.Client) -> None:
    response = client.post("/v1/completions", json={"prompt": ""})
    assert response.status_code == 400 and "empty" in response.json()["error"]["message"]


def test_too_long_prompt_is_400_context_length(client: httpx.Client) -> None:
    response = client.post("/v1/completions", json={"prompt": "x" * 64})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert "64 tokens" in response.json()["error"]["message"]


def test_api_key_is_required_except_for_health(client: httpx.Client) -> None:
    anonymous = httpx.Client(base_url=str(client.base_url), timeout=10)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert anonymous.get(path).status_code == 200
    response = anonymous.post("/v1/chat/completions", json=chat())
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "invalid_api_key"
    wrong = anonymous.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert anonymous.get("/v1/models", headers=AUTH).status_code == 200


def test_full_queue_answers_429_with_retry_after(engine: FakeEngine) -> None:
    engine.gate.clear()  # the first batch blocks in generate
    app = create_app(settings(max_queue=1, max_batch_size=1, batch_wait_ms=0), engine)
    with serve(app) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as c:
        wait_ready(c)
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(c.post, "/v1/completions", json={"prompt": "1", "max_tokens": 2})
            wait_for_metric(c, "kubetune_queue_depth", 0.0, after_batches=1)
            second = pool.submit(c.post, "/v1/completions", json={"prompt": "2", "max_tokens": 2})
            wait_for_metric(c, "kubetune_queue_depth", 1.0)
            third = c.post("/v1/completions", json={"prompt": "3", "max_tokens": 2})
            assert third.status_code == 429
            assert third.headers["retry-after"] == "1"
            assert third.json()["error"]["code"] == "queue_full"
            engine.gate.set()
            assert first.result().status_code == 200 and second.result().status_code == 200
        metrics = c.get("/metrics").text
        assert "kubetune_rejected_total 1.0" in metrics
        assert 'kubetune_requests_total{endpoint="/v1/completions",status="429"} 1.0' in metrics


def wait_for_metric(c: httpx.Client, name: str, value: float, after_batches: int = 0) -> None:
    for _ in range(500):
        text = c.get("/metrics").text
        batches = metric(text, "kubetune_batch_size_count")
        if metric(text, name) == value and batches >= after_batches:
            return
        time.sleep(0.01)
    raise AssertionError(f"{name} never reached {value}")


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def test_concurrent_requests_are_batched(engine: FakeEngine) -> None:
    engine.gate.clear()
    app = create_app(settings(max_batch_size=8, batch_wait_ms=50), engine)
    with serve(app) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as c:
        wait_ready(c)
        with ThreadPoolExecutor(6) as pool:
            blocker = pool.submit(c.post, "/v1/completions", json={"prompt": "0", "max_tokens": 1})
            wait_for_metric(c, "kubetune_batch_size_count", 1.0)
            rest = [
                pool.submit(c.post, "/v1/completions", json={"prompt": str(i), "max_tokens": 3})
                for i in range(5)
            ]
            wait_for_metric(c, "kubetune_queue_depth", 5.0)
            engine.gate.set()
            assert blocker.result().status_code == 200
            assert all(f.result().json()["choices"][0]["text"] == "abc" for f in rest)
    assert engine.batches == [1, 5]


def test_readiness_waits_for_the_model_and_a_failed_load_fails_health() -> None:
    release = threading.Event()

    def slow_loader(_: ServerSettings) -> Any:
        release.wait(30)
        return FakeEngine()

    with serve(create_app(settings(), loader=slow_loader)) as url:
        c = httpx.Client(base_url=url, headers=AUTH, timeout=10)
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 503
        response = c.post("/v1/chat/completions", json=chat())
        assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"
        release.set()
        wait_ready(c)

    def broken_loader(_: ServerSettings) -> Any:
        raise OSError("no such model")

    with serve(create_app(settings(), loader=broken_loader)) as url:
        c = httpx.Client(base_url=url, timeout=10)
        for _ in range(100):
            if c.get("/healthz").status_code == 500:
                break
            time.sleep(0.02)
        assert "no such model" in c.get("/healthz").json()["reason"]
        assert c.get("/readyz").status_code == 503


def test_a_generation_error_is_a_500_body(client: httpx.Client, engine: FakeEngine) -> None:
    engine.fail = True
    response = client.post("/v1/chat/completions", json=chat())
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "generation_failed"
    engine.fail = False
    assert client.post("/v1/chat/completions", json=chat()).status_code == 200


def test_metrics_count_requests_tokens_and_batches(client: httpx.Client) -> None:
    client.post("/v1/chat/completions", json=chat(max_tokens=3))
    client.post("/v1/chat/completions", content=b"{", headers={"content-type": "application/json"})
    text = client.get("/metrics").text
    assert 'kubetune_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0' in text
    assert 'kubetune_requests_total{endpoint="/v1/chat/completions",status="400"} 1.0' in text
    assert metric(text, "kubetune_completion_tokens_total") == 3.0
    assert metric(text, "kubetune_prompt_tokens_total") == 8.0
    assert metric(text, "kubetune_batch_size_count") == 1.0
    assert 'kubetune_request_latency_seconds_count{endpoint="/v1/chat/completions"} 2.0' in text


def test_sampling_fields_at_their_limits_are_served(client: httpx.Client) -> None:
    for fields in ({"seed": 2**64 - 1}, {"seed": -(2**63)}, {"temperature": 0.01}, {"top_p": 1e-9}):
        response = client.post("/v1/chat/completions", json=chat(max_tokens=2, **fields))
        assert response.status_code == 200, (fields, response.text)


def test_the_key_is_checked_before_the_body_is_read(client: httpx.Client) -> None:
    url = str(client.base_url)
    # 100 MB declared, 1 KB sent: the answer cannot wait for the body
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000"
    status, error, seconds = raw_post(url, head, b"{" * 1024)
    assert (status, error["code"]) == (401, "invalid_api_key") and seconds < 1
    anonymous = httpx.Client(base_url=url, timeout=10)
    broken = anonymous.post("/v1/chat/completions", content=b"{not json")
    assert broken.status_code == 401
    assert anonymous.post("/v1/nothing-here", content=b"{").status_code == 401


def test_a_body_over_the_limit_is_413_before_and_while_reading(engine: FakeEngine) -> None:
    app = create_app(settings(max_body_bytes=4096), engine)
    with serve(app) as url, httpx.Client(base_url=url, headers=AUTH, timeout=10) as c:
        wait_ready(c)
        head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}"
        status, error, seconds = raw_post(url, head + "\r\nContent-Length: 100000000")
        assert status == 413 and seconds < 1
        assert error["message"] == (
            "The request body is 100000000 bytes; this server accepts at most 4096 bytes "
            "(--max-body-bytes)."
        )
        chunks = iter([b'{"prompt": "', b"x" * 3000, b"x" * 3000, b'"}'])
        chunked = c.post("/v1/completions", content=chunks)  # no length: read, then refused
        assert chunked.status_code == 413 and "over 4096 bytes" in chunked.text
        parts = iter([b'{"prompt": "x", ', b'"max_tokens": 2}'])
        small = c.post("/v1/completions", content=parts, headers=JSON)
        assert small.status_code == 200, small.text
        assert c.post("/v1/completions", json={"prompt": "x" * 3000}).status_code == 400
    assert engine.tokenized == 2  # the small one and the 3000-character one


def test_a_prompt_over_the_character_cap_is_400_before_tokenizing(engine: FakeEngine) -> None:
    app = create_app(settings(max_prompt_chars=10), engine)
    with serve(app) as url, httpx.Client(base_url=url, headers=AUTH, timeout=10) as c:
        wait_ready(c)
        long = c.post("/v1/completions", json={"prompt": "x" * 11})
        parts = [{"role": "user", "content": "x" * 6}, {"role": "assistant", "content": "y" * 5}]
        many = c.post("/v1/chat/completions", json={"messages": parts})
        fits = c.post("/v1/completions", json={"prompt": "x" * 10, "max_tokens": 1})
    assert long.status_code == many.status_code == 400
    assert long.json()["error"]["code"] == "prompt_too_long"
    assert long.json()["error"]["message"] == (
        "The prompt has 11 characters; this server accepts at most 10 (--max-prompt-chars)."
    )
    assert "11 characters" in many.json()["error"]["message"]
    assert fits.status_code == 200 and engine.tokenized == 1


def test_healthz_answers_while_a_prompt_is_being_tokenized(engine: FakeEngine) -> None:
    release = threading.Event()
    slow = engine.text_prompt_ids

    def stuck_tokenizer(prompt: str) -> list[int]:
        release.wait(10)  # a tokenizer busy for seconds
        return slow(prompt)

    engine.text_prompt_ids = stuck_tokenizer  # type: ignore[method-assign]
    app = create_app(settings(), engine)
    with serve(app) as url, httpx.Client(base_url=url, headers=AUTH, timeout=10) as c:
        wait_ready(c)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(c.post, "/v1/completions", json={"prompt": "x", "max_tokens": 1})
            time.sleep(0.2)
            start = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            assert time.perf_counter() - start < 1
            assert not pending.done()
            release.set()
            assert pending.result().status_code == 200
