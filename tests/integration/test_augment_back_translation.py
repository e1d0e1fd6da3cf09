"""Back-translation against a real OpenAI-compatible server over HTTP (uvicorn on 127.0.0.1).

The server "translates" deterministically: into the pivot language it reverses the text and tags
it; back into the source language it undoes that and paraphrases through a small table. Rows
whose text asks for it get an HTTP 500 or a reply slower than the client's timeout, and one test
shuts the server down after a few requests, so every failure path runs over a real socket.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, HTTPException, Request

from kubetune_api.extras import AugmentationSpec
from kubetune_trainer.augment import AUGMENTED_FROM_KEY, AUGMENTED_KEY, augment_rows

pytestmark = pytest.mark.integration

PARAPHRASES = {"申请": "办理", "How do I": "How can I", "丢了": "遗失了"}
TOKEN = "s3cret"


@dataclass
class Translator:
    """The fake translation service's state: requests seen, and when to stop serving."""

    requests: int = 0
    exit_after: int | None = None
    server: uvicorn.Server | None = None


def create_app(state: Translator) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        state.requests += 1
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            raise HTTPException(401, "bad token")
        body = await request.json()
        system, text = body["messages"][0]["content"], body["messages"][1]["content"]
        if "[500]" in text:
            raise HTTPException(500, "translation backend failed")
        if "[slow]" in text:
            await asyncio.sleep(2.0)
        if state.exit_after is not None and state.requests > state.exit_after:
            # Dying: uvicorn notices should_exit only on its next 0.1 s tick, so a fast client
            # could still be answered; never answer past the limit within the client's timeout.
            await asyncio.sleep(3.0)
            raise HTTPException(503, "shutting down")
        if state.exit_after is not None and state.requests == state.exit_after and state.server:
            state.server.should_exit = True
        return {"choices": [{"message": {"role": "assistant", "content": translate(system, text)}}]}

    return app


def translate(system: str, text: str) -> str:
    if " to English." in system:  # source -> pivot
        return "[en]" + text[::-1]
    back = text.removeprefix("[en]")[::-1]
    for old, new in PARAPHRASES.items():
        back = back.replace(old, new)
    return back


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server() -> Iterator[tuple[str, Translator]]:
    state = Translator()
    port = free_port()
    config = uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning")
    state.server = uvicorn.Server(config)
    thread = threading.Thread(target=state.server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not state.server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", state
    state.server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSLATOR_KEY", TOKEN)


def spec(endpoint: str, **kwargs: Any) -> AugmentationSpec:
    bt = {"endpoint": endpoint, "apiKeyEnv": "TRANSLATOR_KEY", "pivotLanguage": "English"}
    bt.update(kwargs.pop("bt", {}))
    return AugmentationSpec.model_validate({"backTranslation": bt, **kwargs})


ROWS = [
    {"input": "如何申请信用卡？", "target": "通过官网申请。"},
    {"input": "How do I raise my limit?", "target": "Use the app."},
    {"input": "[500] 卡丢了怎么办？", "target": "挂失。"},
    {"input": "账单日是哪天？", "target": "每月5日。"},  # nothing to paraphrase: unchanged
    {"input": "信用卡丢了怎么办？", "target": "请挂失。"},
    {"input": "[slow] 申请分期", "target": "可以。"},
]


def test_rows_added_marked_and_failures_counted(server: tuple[str, Translator]) -> None:
    endpoint, state = server
    eval_row = {"input": "评估：如何申请？", "target": "不参与增强"}
    before = json.dumps(ROWS, ensure_ascii=False)
    added, stats = augment_rows(
        ROWS, spec(endpoint, bt={"timeoutSeconds": 0.5}), fmt="input-target"
    )
    assert json.dumps(ROWS, ensure_ascii=False) == before  # sources unchanged
    by_source = {r[AUGMENTED_FROM_KEY]: r for r in added}
    assert sorted(by_source) == [0, 1, 4]
    assert (
        by_source[0]["input"] == "如何办理信用卡？" and by_source[0]["target"] == "通过官网申请。"
    )
    assert by_source[1]["input"] == "How can I raise my limit?"
    assert by_source[4]["input"] == "信用卡遗失了怎么办？"
    assert all(r[AUGMENTED_KEY] == "back-translation" for r in added)
    assert stats.back_translation_rows == 3 and stats.unchanged_rows == 1
    assert stats.back_translation_failures == 2  # one HTTP 500, one timeout
    assert any("HTTP 500" in r for r in stats.failure_reasons)
    assert any("timeout after 0.5s" in r for r in stats.failure_reasons)
    assert state.requests >= 2 * 4 + 2
    assert eval_row["input"] not in {r["input"] for r in added}


def test_max_rows_caps_requests_too(server: tuple[str, Translator]) -> None:
    endpoint, state = server
    many = [{"input": f"申请第{i}张卡", "target": "好"} for i in range(40)]
    added, stats = augment_rows(many, spec(endpoint, maxRows=5), fmt="input-target")
    assert len(added) == 5 == stats.added_rows
    assert state.requests <= 2 * 8  # at most one batch of 4 rows beyond the first 4


def test_server_killed_midway_is_counted_not_fatal(server: tuple[str, Translator]) -> None:
    endpoint, state = server
    state.exit_after = 6  # three rows' worth of requests answered, then the server shuts down
    many = [{"input": f"申请第{i}张卡", "target": "好"} for i in range(60)]
    added, stats = augment_rows(many, spec(endpoint, bt={"timeoutSeconds": 2}), fmt="input-target")
    assert 1 <= len(added) <= 4
    assert stats.back_translation_stopped
    assert stats.back_translation_failures >= 8
    assert stats.added_rows + stats.back_translation_failures < len(many)


def test_wrong_token_fails_every_row_without_raising(
    server: tuple[str, Translator], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, _ = server
    monkeypatch.setenv("TRANSLATOR_KEY", "wrong")
    added, stats = augment_rows(ROWS[:2], spec(endpoint), fmt="input-target")
    assert added == [] and stats.back_translation_failures == 2
    assert all("HTTP 401" in r for r in stats.failure_reasons)
