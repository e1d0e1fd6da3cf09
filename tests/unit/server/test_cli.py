"""Flags and settings of `kubetune serve` / `kubetune route`, and FineTuneJob adapter lookup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune_server.adapter_source import AdapterNotReadyError, resolve_fine_tune_job
from kubetune_server.cli import build_parser, settings_from_args
from kubetune_server.router_cli import parse_backends, parse_weights
from kubetune_server.settings import ServerSettings, read_api_key


def test_serve_flags_become_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBETUNE_API_KEY", raising=False)
    key = tmp_path / "key"
    key.write_text("token-1\n", encoding="utf-8")
    args = build_parser().parse_args(
        ["--model", "/m", "--adapter", "/out/adapter", "--quantization", "none",
         "--max-batch-size", "4", "--max-new-tokens", "64", "--api-key-file", str(key)]
    )  # fmt: skip
    settings = settings_from_args(args)
    assert settings.quantization == "none" and settings.max_batch_size == 4
    assert settings.api_key == "token-1" and settings.model_name == "adapter"
    assert "token-1" not in repr(settings)


def test_serve_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_API_KEY", "from-secret")
    settings = settings_from_args(build_parser().parse_args(["--model", "/models/qwen3-8b"]))
    assert (settings.quantization, settings.max_batch_size, settings.max_new_tokens) == (
        "int8",
        8,
        512,
    )
    assert settings.api_key == "from-secret" and settings.model_name == "qwen3-8b"
    with pytest.raises(ValueError, match="not both"):
        args = ["--model", "m", "--adapter", "a", "--fine-tune-job", "j"]
        settings_from_args(build_parser().parse_args(args))


def test_named_adapters_are_parsed_and_checked() -> None:
    argv = ["--model", "m", "--adapter", "faq=/a/faq", "--adapter", "legal=/a/legal"]
    settings = settings_from_args(build_parser().parse_args(argv))
    assert settings.adapters == {"faq": "/a/faq", "legal": "/a/legal"} and settings.multi_lora
    assert settings.adapter is None
    bad = {
        "either one DIR": ["--adapter", "faq=/a", "--adapter", "/b"],
        "merges one adapter": ["--adapter", "/a", "--adapter", "/b"],
        "given twice": ["--adapter", "x=/a", "--adapter", "x=/b"],
        "needs both": ["--adapter", "=/a"],
        "must match": ["--adapter", "bad/name=/a"],
        "cannot be combined": ["--adapter", "x=/a", "--fine-tune-job", "j"],
    }
    for message, extra in bad.items():
        with pytest.raises(ValueError, match=message):
            settings_from_args(build_parser().parse_args(["--model", "m", *extra]))


def test_empty_key_file_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        read_api_key(empty)


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        ServerSettings(model="m", max_batch_size=0)


def test_route_backends_and_weights() -> None:
    assert parse_backends(["large=http://a:8000", "small=http://b:8000/"]) == {
        "large": "http://a:8000",
        "small": "http://b:8000/",
    }
    with pytest.raises(ValueError, match="name=http"):
        parse_backends(["large:8000"])
    with pytest.raises(ValueError, match="twice"):
        parse_backends(["a=http://x", "a=http://y"])
    assert parse_weights(["large=0.2", "small=0.8"]) == {"large": 0.2, "small": 0.8}
    with pytest.raises(ValueError, match=r"name=0\.3"):
        parse_weights(["large=lots"])


def job(phase: str | None, path: str | None = None, message: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "message": message}
    if path:
        status["output"] = {"adapterPath": path}
    return {"metadata": {"name": "ftj"}, "status": status}


def test_fine_tune_job_adapter_is_awaited_then_returned() -> None:
    answers = iter([job("Pending"), job("Running"), job("Succeeded", "/out/ftj/adapter")])
    asked: list[tuple[str, str]] = []

    def fetch(name: str, namespace: str) -> dict[str, Any]:
        asked.append((name, namespace))
        return next(answers)

    path = resolve_fine_tune_job("ftj", "team-a", poll_s=0, fetch=fetch)
    assert path == Path("/out/ftj/adapter") and asked == [("ftj", "team-a")] * 3


def test_a_failed_or_pathless_fine_tune_job_is_an_error() -> None:
    with pytest.raises(AdapterNotReadyError, match="failed: OOM twice"):
        resolve_fine_tune_job("ftj", "ns", fetch=lambda n, ns: job("Failed", message="OOM twice"))
    with pytest.raises(AdapterNotReadyError, match="adapterPath"):
        resolve_fine_tune_job("ftj", "ns", fetch=lambda n, ns: job("Succeeded"))
    with pytest.raises(AdapterNotReadyError, match="did not succeed"):
        resolve_fine_tune_job("ftj", "ns", timeout_s=0, fetch=lambda n, ns: job("Running"))
