"""Many LoRA adapters on one INT8 base (issue 15), over real HTTP on 127.0.0.1.

Two LoRA adapters are trained a few steps on the tiny random Qwen3 and saved as the trainer
saves them. One `kubetune serve` holds both (`--adapter a=DIR --adapter b=DIR`, int8, unmerged);
two more hold one each. Concurrent greedy requests for a, b and the base land in shared batches
(a 300 ms collection window) on the first server, and every answer must be token-identical to
the server that holds that adapter alone. Then adapters change at run time without a restart:
through the admin endpoint (load, swap, unload; a prefix-tuning adapter and a missing folder
are Failed with the reason, and stay Failed), and through the watched adapter config file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from test_server_adapters import train_and_save  # the sibling module: same training

from kubetune_server.process import KubetuneProcess

pytestmark = pytest.mark.integration

KEY = "lora-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPTS = ["如何申请信用卡？", "hello there, how are you", "告诉我天气", "a b c d e f"]
COMMON = ["--max-model-len", "256", "--threads", "1", "--max-new-tokens", "10"]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    out = {}
    for seed, name in enumerate(("a", "b", "c")):
        torch.manual_seed(seed)
        out[name] = train_and_save(tiny_model_dir, "lora", root / name)
    torch.manual_seed(0)
    out["prefix"] = train_and_save(tiny_model_dir, "prefix-tuning", root / "prefix")
    return out


def serve(model: Path, *args: str) -> KubetuneProcess:
    return KubetuneProcess(
        "serve",
        ["--model", str(model), *COMMON, *args],
        env={"KUBETUNE_API_KEY": KEY},
        ready_s=600,  # importing peft takes a while on a busy 2-core machine
    )


def complete(url: str, model: str | None, prompt: str) -> list[int]:
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": 10, "temperature": 0}
    body |= {"ignore_eos": True, "return_token_ids": True}
    if model is not None:
        body["model"] = model
    r = httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == (model or "base")
    return list(r.json()["choices"][0]["token_ids"])


def batch_sizes(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("kubetune_batch_size_sum"))
    return float(line.split()[-1])


@pytest.fixture(scope="module")
def multi(tiny_model_dir: Path, adapters: dict[str, Path]) -> Iterator[KubetuneProcess]:
    args = ["--adapter", f"a={adapters['a']}", "--adapter", f"b={adapters['b']}"]
    args += ["--served-model-name", "base", "--batch-wait-ms", "300", "--enable-adapter-admin"]
    with serve(tiny_model_dir, *args) as proc:
        yield proc


def test_mixed_batches_answer_what_each_adapter_answers_alone(
    multi: KubetuneProcess, tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    asks = [(m, p) for p in PROMPTS for m in ("a", "b", None)]
    before = batch_sizes(multi.url)
    with ThreadPoolExecutor(len(asks)) as pool:
        mixed = list(pool.map(lambda ask: complete(multi.url, *ask), asks))
    assert batch_sizes(multi.url) - before == len(asks)
    listed = httpx.get(f"{multi.url}/v1/models", headers=AUTH).json()["data"]
    assert [(m["id"], m["parent"]) for m in listed] == [
        ("base", None),
        ("a", "base"),
        ("b", "base"),
    ]
    holders = {
        name: serve(tiny_model_dir, "--served-model-name", "base",
                    *(["--adapter", f"{name}={adapters[name]}"] if name else []))
        for name in ("a", "b", None)
    }  # fmt: skip
    alone: dict[str | None, list[list[int]]] = {}
    try:
        for proc in holders.values():
            proc.launch()
        for name, proc in holders.items():
            proc.wait_ready()
            alone[name] = [complete(proc.url, name, p) for p in PROMPTS]
    finally:
        for proc in holders.values():
            proc.stop()
    for (model, prompt), tokens in zip(asks, mixed, strict=True):
        assert tokens == alone[model][PROMPTS.index(prompt)], (model, prompt)
    assert alone["a"] != alone["b"] != alone[None], "the adapters must change the answers"


def admin(url: str, method: str, suffix: str = "", **body: str) -> httpx.Response:
    kwargs: dict[str, Any] = {"json": body} if body else {}
    return httpx.request(method, f"{url}/v1/adapters{suffix}", headers=AUTH, timeout=120, **kwargs)


def state_of(url: str, name: str) -> dict[str, Any]:
    found = [s for s in admin(url, "GET").json()["data"] if s["name"] == name]
    assert len(found) == 1, found
    return found[0]


def test_adapters_load_swap_and_unload_at_run_time(
    multi: KubetuneProcess, adapters: dict[str, Path]
) -> None:
    pid = httpx.get(f"{multi.url}/healthz").json()["pid"]
    r = admin(multi.url, "POST", name="c", path=str(adapters["c"]))
    assert r.status_code == 200 and r.json()["state"] == "Loaded", r.text
    c_tokens = complete(multi.url, "c", PROMPTS[0])
    assert c_tokens != complete(multi.url, "a", PROMPTS[0])
    r = admin(multi.url, "POST", name="c", path=str(adapters["a"]))  # swap c's folder to a's
    assert r.status_code == 200, r.text
    assert complete(multi.url, "c", PROMPTS[0]) == complete(multi.url, "a", PROMPTS[0])
    assert admin(multi.url, "DELETE", "/c").status_code == 200
    r = httpx.post(f"{multi.url}/v1/completions", json={"model": "c", "prompt": "x"}, headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
    assert httpx.get(f"{multi.url}/healthz").json()["pid"] == pid  # never restarted


@pytest.mark.parametrize("kind", ["prefix", "missing"])
def test_an_adapter_that_cannot_load_is_failed_with_its_reason_and_not_retried(
    multi: KubetuneProcess, adapters: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    folder = adapters["prefix"] if kind == "prefix" else tmp_path / "nothing-here"
    r = admin(multi.url, "POST", name=f"bad-{kind}", path=str(folder))
    assert r.status_code == 422, r.text
    expected = "PREFIX_TUNING adapter" if kind == "prefix" else "no adapter_config.json"
    assert expected in r.json()["error"]["message"]
    first = state_of(multi.url, f"bad-{kind}")
    assert first["state"] == "Failed" and expected in first["reason"], first
    time.sleep(2.5)
    assert state_of(multi.url, f"bad-{kind}") == first  # same `since`: nothing retried it
    r = httpx.post(
        f"{multi.url}/v1/completions", json={"model": f"bad-{kind}", "prompt": "x"}, headers=AUTH
    )
    assert r.status_code == 503 and expected in r.json()["error"]["message"], r.text
    assert complete(multi.url, "a", PROMPTS[1])  # the others still serve
    assert admin(multi.url, "DELETE", f"/bad-{kind}").status_code == 200


def test_the_adapter_config_file_is_followed_without_a_restart(
    tiny_model_dir: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    config = tmp_path / "adapters.json"
    config.write_text(json.dumps({"a": str(adapters["a"])}))
    with serve(tiny_model_dir, "--served-model-name", "base", "--adapter-config", str(config)) as p:
        assert [s["name"] for s in admin(p.url, "GET").json()["data"]] == ["a"]
        pid = httpx.get(f"{p.url}/healthz").json()["pid"]
        a_tokens = complete(p.url, "a", PROMPTS[0])
        config.write_text(json.dumps({"b": str(adapters["b"]), "c": str(adapters["prefix"])}))
        deadline = time.monotonic() + 30
        while {s["name"] for s in admin(p.url, "GET").json()["data"]} != {"b", "c"}:
            assert time.monotonic() < deadline, admin(p.url, "GET").text
            time.sleep(0.2)
        assert state_of(p.url, "b")["state"] == "Loaded"
        assert state_of(p.url, "c")["state"] == "Failed"
        assert complete(p.url, "b", PROMPTS[0]) != a_tokens
        r = admin(p.url, "POST", name="x", path=str(adapters["a"]))
        assert r.status_code == 403  # no --enable-adapter-admin
        assert httpx.get(f"{p.url}/healthz").json()["pid"] == pid
