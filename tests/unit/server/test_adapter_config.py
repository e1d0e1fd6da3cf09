"""The adapter config file: both entry shapes, every bad entry named, and the watcher applying it.

Parsing is pure; the watcher runs against a real `AdapterRegistry` over `lora_fakes.FakeLora`
(no model), on a file in tmp_path, one `sync_once` at a time.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from kubetune_server.adapter_config import (
    AdapterConfigWatcher,
    AdapterEntry,
    CanaryEntry,
    parse_adapter_config,
    parse_adapter_entries,
)
from kubetune_server.adapter_registry import AdapterRegistry
from unit.server.lora_fakes import FakeLora, run_now


def parse(data: Any) -> dict[str, AdapterEntry]:
    return parse_adapter_entries(json.dumps(data), "/etc/adapters.json")


def test_both_shapes_parse() -> None:
    got = parse(
        {
            "plain": "/a",
            "object": {"path": "/b"},
            "null-canary": {"path": "/c", "canary": None},
            "canary": {"path": "/d", "canary": {"path": "/e", "percent": 10}},
            "fraction": {"path": "/f", "canary": {"path": "/g", "percent": 0.5}},
        }
    )
    assert got == {
        "plain": AdapterEntry("/a"),
        "object": AdapterEntry("/b"),
        "null-canary": AdapterEntry("/c"),
        "canary": AdapterEntry("/d", CanaryEntry("/e", 10.0)),
        "fraction": AdapterEntry("/f", CanaryEntry("/g", 0.5)),
    }
    assert isinstance(got["canary"].canary and got["canary"].canary.percent, float)
    assert parse_adapter_entries("", "f") == {} == parse_adapter_entries("  \n", "f")


def test_parse_adapter_config_keeps_giving_the_stable_folders() -> None:
    text = json.dumps({"a": "/a", "b": {"path": "/b", "canary": {"path": "/c", "percent": 5}}})
    assert parse_adapter_config(text, "cm") == {"a": "/a", "b": "/b"}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("", "adapter 'faq': path must name a folder, got ''"),
        (7, "adapter 'faq': must be a folder or an object {\"path\", \"canary\"}, got 7"),
        ({}, "adapter 'faq': path must name a folder, got None"),
        ({"path": ["x"]}, "adapter 'faq': path must name a folder, got ['x']"),
        ({"path": "/a", "canery": {}}, "adapter 'faq': unknown field canery, allowed: canary, path"),
        ({"path": "/a", "canary": "/b"}, "adapter 'faq': canary must be an object"),
        ({"path": "/a", "canary": {"percent": 5}}, "canary.path must name a folder, got None"),
        ({"path": "/a", "canary": {"path": "", "percent": 5}}, "canary.path must name a folder"),
        ({"path": "/a", "canary": {"path": "/b"}}, "canary.percent must be a number > 0 and < 100, got None"),
        ({"path": "/a", "canary": {"path": "/b", "percent": 0}}, "must be a number > 0 and < 100, got 0"),
        ({"path": "/a", "canary": {"path": "/b", "percent": 100}}, "got 100"),
        ({"path": "/a", "canary": {"path": "/b", "percent": -3}}, "got -3"),
        ({"path": "/a", "canary": {"path": "/b", "percent": "10"}}, "got '10'"),
        ({"path": "/a", "canary": {"path": "/b", "percent": True}}, "got True"),
        ({"path": "/a", "canary": {"path": "/b", "percent": 10, "weight": 1}}, "unknown field canary.weight"),
    ],
)  # fmt: skip
def test_a_bad_entry_names_the_file_the_adapter_the_field_and_the_value(
    entry: Any, message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        parse({"ok": "/fine", "faq": entry})
    assert str(caught.value).startswith("/etc/adapters.json: adapter 'faq': ")
    assert message in str(caught.value)


def test_non_finite_percent_and_every_bad_entry_at_once() -> None:
    text = '{"a": {"path": "/a", "canary": {"path": "/b", "percent": NaN}}, "b": "", "c": "/c"}'
    with pytest.raises(ValueError) as caught:
        parse_adapter_entries(text, "f.json")
    assert str(caught.value) == (
        "f.json: adapter 'a': canary.percent must be a number > 0 and < 100, got nan; "
        "adapter 'b': path must name a folder, got ''"
    )


@pytest.mark.parametrize(
    ("text", "message"), [("{nope", "f.json: not JSON"), ("[1]", "must be a JSON object")]
)
def test_a_file_that_is_not_an_object_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_adapter_entries(text, "f.json")


class Harness:
    """A watcher over a real registry (fake LoRA set) and its file."""

    def __init__(self, tmp_path: Path) -> None:
        self.file = tmp_path / "adapters.json"
        self.lora = FakeLora()
        self.registry = AdapterRegistry(self.lora, run_now, "base")
        self.watcher = AdapterConfigWatcher(self.file, self.registry, poll_s=60)

    def write(self, data: Any) -> None:
        if isinstance(data, bytes):
            self.file.write_bytes(data)
        else:
            self.file.write_text(data if isinstance(data, str) else json.dumps(data))
        asyncio.run(self.watcher.sync_once())

    def view(self) -> dict[str, Any]:
        out = {}
        for report in self.registry.reports():
            body = report.to_json()
            canary = body["canary"] and (body["canary"]["path"], body["canary"]["state"],
                                         body["canary"]["percent"])  # fmt: skip
            out[body["name"]] = (body["servingPath"], body["state"], canary)
        return out


def test_the_watcher_loads_changes_and_drops_canaries(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.write({"faq": "/v1"})
    assert h.view() == {"faq": ("/v1", "Loaded", None)}
    h.write({"faq": {"path": "/v1", "canary": {"path": "/v2", "percent": 10}}})
    assert h.view() == {"faq": ("/v1", "Loaded", ("/v2", "Loaded", 10.0))}
    assert sorted(h.lora.loaded.values()) == ["/v1", "/v2"]
    h.write({"faq": {"path": "/v1", "canary": {"path": "/v2", "percent": 30}}})
    assert h.view()["faq"][2] == ("/v2", "Loaded", 30.0)
    assert h.lora.loads == ["/v1", "/v2"]  # a new percent reloads nothing
    h.write({"faq": "/v1"})
    assert h.view() == {"faq": ("/v1", "Loaded", None)}
    assert list(h.lora.loaded.values()) == ["/v1"]


def test_promotion_reuses_the_canary_weights(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.write({"faq": {"path": "/v1", "canary": {"path": "/v2", "percent": 10}}})
    canary_peft = next(n for n, f in h.lora.loaded.items() if f == "/v2")
    h.write({"faq": "/v2"})
    assert h.view() == {"faq": ("/v2", "Loaded", None)}
    assert h.lora.loads == ["/v1", "/v2"] and h.lora.loaded == {canary_peft: "/v2"}
    assert h.registry.peft_name("faq") == canary_peft


def test_a_canary_that_fails_is_failed_gets_no_traffic_and_is_not_retried(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    entry = {"faq": {"path": "/v1", "canary": {"path": "/broken", "percent": 50}}}
    h.write(entry)
    assert h.view() == {"faq": ("/v1", "Loaded", ("/broken", "Failed", 50.0))}
    canary = h.registry.reports()[0].to_json()["canary"]
    assert "/broken has no adapter_config.json" in canary["reason"]
    assert {h.registry.peft_name("faq", canary=True)} == {h.registry.peft_name("faq")}
    h.write({**entry, "other": "/o"})  # the file changed, this entry did not
    h.write(json.dumps(entry) + " ")
    assert h.lora.loads == ["/v1", "/broken", "/o"]
    h.write({"faq": {"path": "/v1", "canary": {"path": "/broken", "percent": 20}}})
    assert h.lora.loads == ["/v1", "/broken", "/o"]  # only the percent changed
    h.write({"faq": {"path": "/v1", "canary": {"path": "/v3", "percent": 20}}})
    assert h.view()["faq"][2] == ("/v3", "Loaded", 20.0)


def test_a_canary_that_fails_after_another_served_unloads_it(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.write({"faq": {"path": "/v1", "canary": {"path": "/v2", "percent": 50}}})
    h.write({"faq": {"path": "/v1", "canary": {"path": "/broken-v3", "percent": 50}}})
    assert h.view()["faq"][2] == ("/broken-v3", "Failed", 50.0)
    assert list(h.lora.loaded.values()) == ["/v1"]


def test_a_bad_file_is_reported_and_what_was_loaded_keeps_serving(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    good = {"faq": {"path": "/v1", "canary": {"path": "/v2", "percent": 10}}}
    h.write(good)
    h.write({"faq": {"path": "/v1", "canary": {"path": "/v2", "percent": 150}}})
    assert h.watcher.error is not None
    assert (
        "adapter 'faq': canary.percent must be a number > 0 and < 100, got 150" in h.watcher.error
    )
    assert h.view() == {"faq": ("/v1", "Loaded", ("/v2", "Loaded", 10.0))}
    h.write(b'{"faq": "/v\xff"')  # not UTF-8 (and cut short): an error, not a dead watcher
    assert h.watcher.error is not None and h.view()["faq"][1] == "Loaded"
    h.write(good)
    assert h.watcher.error is None


def test_changing_the_stable_path_keeps_the_canary(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.write({"faq": {"path": "/v1", "canary": {"path": "/v2", "percent": 10}}})
    h.write({"faq": {"path": "/v1b", "canary": {"path": "/v2", "percent": 10}}})
    assert h.view() == {"faq": ("/v1b", "Loaded", ("/v2", "Loaded", 10.0))}
    assert sorted(h.lora.loaded.values()) == ["/v1b", "/v2"]
    h.write({})
    assert h.view() == {} and h.lora.loaded == {}
