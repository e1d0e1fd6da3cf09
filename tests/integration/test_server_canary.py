"""A canary of a named adapter on the real server over HTTP: traffic split, counters, promotion.

One `kubetune serve` (tiny random Qwen3, int8, unmerged LoRA, an API key) follows a watched
adapter config file. `faq` serves adapter a, with a canary at 50 % whose LoRA weights are NaN:
its rows produce non-finite logits, so every request the header says went to the canary fails
with a 5xx and every stable one answers 200, and the key-free `/adapterz` counts exactly that.
Removing the canary sends everything to stable (its counters go on); a good canary (adapter b)
is then promoted by pointing `path` at its folder while a client thread keeps sending, and no
request fails: the promoted weights answer (b's tokens), without a reload. Then a plain swap
back to a, still without a failed request.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from test_server_adapters import train_and_save  # the sibling module: same training

from kubetune_api.adapter_report import path_digest
from kubetune_server.process import KubetuneProcess

pytestmark = pytest.mark.integration

KEY = "canary-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
HEADER = "x-kubetune-adapter-variant"
PROMPT = "如何申请信用卡？"


@pytest.fixture(scope="module")
def folders(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("canary-loras")
    out = {}
    for seed, name in enumerate(("a", "b")):
        torch.manual_seed(seed)
        out[name] = train_and_save(tiny_model_dir, "lora", root / name)
    nan = shutil.copytree(out["a"], root / "nan")
    weights = nan / "adapter_model.safetensors"
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(weights).items()}, weights)
    out["nan"] = nan
    return out


def write(config: Path, data: dict[str, Any]) -> None:
    """Replace the file in one step, as the kubelet swaps a ConfigMap's files."""
    tmp = config.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, config)


def ask(url: str) -> httpx.Response:
    body = {"model": "faq", "prompt": PROMPT, "max_tokens": 3, "temperature": 0}
    body |= {"ignore_eos": True, "return_token_ids": True}
    return httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=60)


def faq(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/adapterz", timeout=10)  # no key, although the server has one
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["configError"] is None, body
    assert [a["name"] for a in body["adapters"]] == ["faq"]
    return dict(body["adapters"][0])


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def tokens(r: httpx.Response) -> list[int]:
    return list(r.json()["choices"][0]["token_ids"])


@pytest.fixture(scope="module")
def server(
    tiny_model_dir: Path, folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KubetuneProcess, Path]]:
    config = tmp_path_factory.mktemp("canary-config") / "adapters.json"
    canary = {"path": str(folders["nan"]), "percent": 50}
    write(config, {"faq": {"path": str(folders["a"]), "canary": canary}})
    args = ["--model", str(tiny_model_dir), "--served-model-name", "base"]
    args += ["--max-model-len", "128", "--threads", "1", "--max-new-tokens", "3"]
    args += ["--batch-wait-ms", "20", "--adapter-config", str(config)]
    proc = KubetuneProcess("serve", args, env={"KUBETUNE_API_KEY": KEY}, ready_s=600)
    with proc:
        yield proc, config


def test_a_nan_canary_fails_its_share_alone_and_adapterz_counts_it(
    server: tuple[KubetuneProcess, Path], folders: dict[str, Path]
) -> None:
    proc, config = server
    url = proc.url
    assert httpx.get(f"{url}/v1/adapters").status_code == 401
    assert httpx.get(f"{url}/adapterz").status_code == 200
    with ThreadPoolExecutor(4) as pool:  # a few at a time: canary and stable rows share batches
        answers = list(pool.map(lambda _: ask(url), range(30)))
    stable = [r for r in answers if r.headers[HEADER] == "stable"]
    canary = [r for r in answers if r.headers[HEADER] == "canary"]
    assert len(stable) + len(canary) == 30 and stable and canary
    assert all(r.status_code == 200 for r in stable), [r.text for r in stable]
    assert len({tuple(tokens(r)) for r in stable}) == 1  # NaN batch mates change nothing
    assert {r.status_code for r in canary} == {500}, [r.text for r in canary]
    assert "not finite" in canary[0].json()["error"]["message"]
    state = faq(url)
    assert (state["state"], state["requests"], state["errors"]) == ("Loaded", len(stable), 0)
    assert state["canary"] == {
        "state": "Loaded",
        "reason": None,
        "pathDigest": path_digest(str(folders["nan"])),  # the folder's digest, never the folder
        "percent": 50.0,
        "requests": len(canary),
        "errors": len(canary),
    }
    assert state["pathDigest"] == path_digest(str(folders["a"]))
    assert str(folders["a"]) not in json.dumps(state)

    write(config, {"faq": str(folders["a"])})
    wait_for(lambda: faq(url)["canary"] is None, "the canary was never dropped")
    answers = [ask(url) for _ in range(6)]
    assert [(r.status_code, r.headers[HEADER]) for r in answers] == [(200, "stable")] * 6
    assert (faq(url)["requests"], faq(url)["errors"]) == (len(stable) + 6, 0)


def test_promoting_a_good_canary_and_swapping_back_drop_no_request(
    server: tuple[KubetuneProcess, Path], folders: dict[str, Path]
) -> None:
    proc, config = server
    url = proc.url
    a, b = str(folders["a"]), str(folders["b"])
    write(config, {"faq": {"path": a, "canary": {"path": b, "percent": 50}}})
    wanted = {"state": "Loaded", "pathDigest": path_digest(b)}
    wait_for(
        lambda: (faq(url)["canary"] or {}).items() >= wanted.items(), "canary b not loaded"
    )  # fmt: skip
    seen: dict[str, list[int]] = {}
    wait_for(lambda: seen.update({(r := ask(url)).headers[HEADER]: tokens(r)}) or len(seen) == 2,
             "never saw both variants")  # fmt: skip
    assert seen["stable"] != seen["canary"], "adapters a and b must answer differently"

    answers: list[httpx.Response] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            answers.append(ask(url))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        write(config, {"faq": b})  # promotion: the canary's folder becomes `path`
        wait_for(lambda: faq(url)["canary"] is None, "the canary was never promoted")
        promoted = len(answers) + 1  # the one in flight may have picked its variant before
        wait_for(lambda: len(answers) >= promoted + 3, "no answers after the promotion")
        write(config, {"faq": a})  # a plain swap (a reload) under load
        keyed = lambda: httpx.get(f"{url}/v1/adapters", headers=AUTH).json()["data"][0]  # noqa: E731
        wait_for(lambda: keyed()["servingPath"] == a, "never swapped back to a")
        swapped = len(answers) + 1
        wait_for(lambda: len(answers) >= swapped + 3, "no answers after the swap")
    finally:
        stop.set()
        thread.join(60)
    assert [r.status_code for r in answers] == [200] * len(answers), [
        r.text for r in answers if r.status_code != 200
    ]
    assert {r.headers[HEADER] for r in answers[promoted:]} == {"stable"}
    assert tokens(answers[promoted]) == seen["canary"]  # b's weights, now as stable
    assert tokens(answers[-1]) == seen["stable"]  # a again
    assert "canary" in proc.log_tail(20000) and "is now the stable folder" in proc.log_tail(20000)
    assert faq(url)["errors"] == 0
