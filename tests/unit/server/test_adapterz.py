"""`GET /adapterz` and the variant header over real HTTP, with a fake engine and fake LoRA set.

The engine fails every row routed to a folder named "nan..." before its first token (a 500, as
non-finite logits give) and every row of a folder named "late..." after one token (mid-stream);
so each request's `x-kubetune-adapter-variant` header says what its status must be, and the
counters at `/adapterz` must add up to what the client saw. The real model: the integration test
`test_server_canary.py`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from kubetune_api.adapter_report import AdaptersReport, path_digest
from kubetune_server.app import create_app
from kubetune_server.engine import GenerationJob
from kubetune_server.settings import ServerSettings
from unit.server.http import serve
from unit.server.lora_fakes import FakeLora
from unit.server.test_app import AUTH, FakeEngine, settings, wait_ready

HEADER = "x-kubetune-adapter-variant"


class LoraEngine(FakeEngine):
    """The fake engine, with named adapters whose folder name says how they fail."""

    def __init__(self) -> None:
        super().__init__()
        self.lora = FakeLora()

    def generate(
        self,
        jobs: list[GenerationJob],
        emit: Callable[[int, int], bool],
        samplers: Any = None,
        adapters: Any = None,
    ) -> list[str]:
        folders = [self.lora.loaded.get(a, "") for a in adapters or []]
        if any(Path(f).name.startswith("nan") for f in folders):
            raise RuntimeError("the model produced logits that are not finite")
        if any(Path(f).name.startswith("late") for f in folders):
            emit(0, 97)
            raise RuntimeError("died after one token")
        return super().generate(jobs, emit, samplers, adapters)


def start(config: Path, engine: FakeEngine) -> Any:
    return serve(create_app(settings(adapter_config=config, adapter_poll_s=0.05), engine))


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    path = tmp_path / "adapters.json"
    path.write_text(json.dumps({
        "faq": {"path": "/a/faq-v1", "canary": {"path": "/a/nan-v2", "percent": 50}},
        "legal": "/a/legal",
    }))  # fmt: skip
    return path


@pytest.fixture()
def url(config: Path) -> Iterator[str]:
    with start(config, LoraEngine()) as url, httpx.Client(base_url=url, headers=AUTH) as c:
        wait_ready(c)
        yield url


def adapterz(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/adapterz")  # never a key
    assert r.status_code == 200, r.text
    return dict(r.json())


def ask(url: str, model: str | None, **extra: Any) -> httpx.Response:
    body = {"prompt": "hi", "max_tokens": 3, **({"model": model} if model else {}), **extra}
    return httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=30)


def test_counters_add_up_to_what_clients_saw_and_show_no_folders(url: str) -> None:
    seen = {"stable": 0, "canary": 0}
    for _ in range(24):
        r = ask(url, "faq")
        variant = r.headers[HEADER]
        assert r.status_code == (500 if variant == "canary" else 200), r.text
        seen[variant] += 1
    assert seen["stable"] and seen["canary"]
    assert HEADER not in ask(url, None).headers  # the base has no variants
    assert ask(url, "legal").headers[HEADER] == "stable"
    assert ask(url, "faq", max_tokens=0).status_code == 400  # refused before a variant: uncounted
    body = adapterz(url)
    assert body["configError"] is None
    faq, legal = body["adapters"]
    assert faq == {
        "name": "faq",
        "state": "Loaded",
        "reason": None,
        "pathDigest": path_digest("/a/faq-v1"),
        "since": faq["since"],
        "requests": seen["stable"],
        "errors": 0,
        "canary": {
            "state": "Loaded",
            "reason": None,
            "pathDigest": path_digest("/a/nan-v2"),
            "percent": 50.0,
            "requests": seen["canary"],
            "errors": seen["canary"],
        },
    }
    assert isinstance(faq["since"], int) and faq["since"] > 1_700_000_000
    assert (
        AdaptersReport.model_validate(body).adapters[0].canary is not None
    )  # the operator's parse
    assert (legal["name"], legal["requests"], legal["canary"]) == ("legal", 1, None)
    assert "/a/" not in json.dumps(body)
    keyed = httpx.get(f"{url}/v1/adapters", headers=AUTH).json()["data"][0]
    assert keyed["canary"]["path"] == "/a/nan-v2" and keyed["servingPath"] == "/a/faq-v1"
    assert keyed["requests"] == seen["stable"] and keyed["canary"]["errors"] == seen["canary"]


def test_adapterz_needs_no_key_but_v1_adapters_does(url: str) -> None:
    assert httpx.get(f"{url}/v1/adapters").status_code == 401
    assert (
        httpx.get(f"{url}/adapterz", headers={"Authorization": "Bearer wrong"}).status_code == 200
    )


def test_adapterz_reads_no_body(url: str) -> None:
    """A declared body that never comes: the answer must not wait for it."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(b"GET /adapterz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            data += sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200") and b'"adapters"' in data


def test_a_stream_that_fails_midway_counts_as_an_error(tmp_path: Path) -> None:
    config = tmp_path / "adapters.json"
    config.write_text(json.dumps({"faq": {"path": "/a/v1", "canary": {"path": "/a/late",
                                                                      "percent": 99.99}}}))  # fmt: skip
    with start(config, LoraEngine()) as url, httpx.Client(base_url=url, headers=AUTH) as c:
        wait_ready(c)
        with c.stream("POST", "/v1/completions", json={"model": "faq", "prompt": "hi",
                                                       "stream": True}) as r:  # fmt: skip
            assert r.status_code == 200 and r.headers[HEADER] == "canary"
            text = r.read().decode()
        assert '"text": "a"' in text and "died after one token" in text
        canary = adapterz(url)["adapters"][0]["canary"]
        assert (canary["requests"], canary["errors"]) == (1, 1)


def test_a_bad_file_shows_as_config_error_and_the_adapters_keep_serving(
    url: str, config: Path
) -> None:
    config.write_text(json.dumps({"faq": {"path": "/a/faq-v1", "canary": {"percent": 5}}}))
    deadline = time.monotonic() + 10
    while adapterz(url)["configError"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    error = adapterz(url)["configError"]
    assert "adapter 'faq': canary.path must name a folder, got None" in error
    assert [a["name"] for a in adapterz(url)["adapters"]] == ["faq", "legal"]
    assert ask(url, "legal").status_code == 200


def test_without_named_adapters_the_list_is_empty_and_while_loading_503() -> None:
    release = threading.Event()

    def slow_loader(_: ServerSettings) -> Any:
        release.wait(30)
        return FakeEngine()

    with serve(create_app(settings(), loader=slow_loader)) as url:
        r = httpx.get(f"{url}/adapterz")
        assert r.status_code == 503 and r.json()["status"] == "not ready"
        release.set()
        with httpx.Client(base_url=url) as c:
            wait_ready(c)
        assert adapterz(url) == {"adapters": [], "configError": None}
