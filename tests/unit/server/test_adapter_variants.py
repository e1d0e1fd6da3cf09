"""Canary routing and counters: the per-request pick, the registry's variants, the two reports.

`pick_variant` is checked with seeded and scripted draws; the registry runs over
`lora_fakes.FakeLora` (no model), so which peft adapter each variant resolves to is visible.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

from kubetune_api.adapter_report import path_digest
from kubetune_server.adapter_registry import AdapterRegistry
from kubetune_server.adapter_variants import (
    AdapterReport,
    AdapterState,
    CanaryState,
    VariantCounts,
    pick_variant,
    public_reason,
)
from kubetune_server.errors import ApiError
from unit.server.lora_fakes import FakeLora, run_now


@pytest.mark.parametrize("percent", [0.01, 1.0, 10.0, 50.0, 90.0, 99.99])
def test_the_canary_share_follows_percent(percent: float) -> None:
    rng = random.Random(1234)
    n = 20_000
    share = sum(pick_variant(percent, rng.random) == "canary" for _ in range(n)) / n
    sigma = (percent / 100 * (1 - percent / 100) / n) ** 0.5
    assert abs(share - percent / 100) <= 5 * sigma + 1e-4, share


def test_the_pick_is_a_plain_threshold_on_one_draw() -> None:
    assert pick_variant(None, lambda: 0.0) == "stable"  # no servable canary
    assert pick_variant(10.0, lambda: 0.0999) == "canary"
    assert pick_variant(10.0, lambda: 0.1) == "stable"
    assert pick_variant(99.99, lambda: 0.9998) == "canary"
    assert pick_variant(0.01, lambda: 0.0001) == "stable"


def test_only_server_errors_count() -> None:
    counts = VariantCounts()
    for status in (404, 400, 500, 503, 429):
        counts.record_request()
        counts.record_failure(status)
    assert (counts.requests, counts.errors) == (5, 2)


def test_a_public_reason_hides_folders_and_is_short() -> None:
    reason = "/mnt/pvc/out/faq-v2 has no adapter_config.json (in /mnt/pvc/out/faq-v2/x)"
    assert public_reason(reason, "/mnt/pvc/out/faq-v2/", None) == (
        "<folder> has no adapter_config.json (in <folder>/x)"
    )
    assert public_reason("", "/a") is None
    shown = public_reason("x" * 1000, "/")
    assert shown is not None and len(shown) == 300 and shown.endswith("...")


def test_the_keyed_report_has_folders_and_the_public_one_has_none() -> None:
    report = AdapterReport(
        AdapterState("faq", "/p/stable", "Loaded", "", "/p/stable", 1733540000.7),
        VariantCounts(57, 0),
        CanaryState("/p/canary", 10.0, "Failed", "/p/canary: weights cannot be read", 1.0),
        None,
    )
    public = report.to_public().model_dump(mode="json", by_alias=True)
    assert public == {
        "name": "faq",
        "state": "Loaded",
        "reason": None,
        "pathDigest": path_digest("/p/stable"),
        "since": 1733540000,
        "requests": 57,
        "errors": 0,
        "canary": {
            "state": "Failed",
            "reason": "<folder>: weights cannot be read",
            "pathDigest": path_digest("/p/canary"),
            "percent": 10.0,
            "requests": 0,
            "errors": 0,
        },
    }
    assert "/p/" not in str(public)
    keyed = report.to_json()
    assert keyed["path"] == keyed["servingPath"] == "/p/stable"
    assert keyed["canary"]["path"] == "/p/canary" and keyed["canary"]["since"] == 1
    assert keyed["requests"] == 57 and keyed["canary"]["reason"].startswith("/p/canary:")


class Draws:
    """A scripted `random.random`."""

    def __init__(self) -> None:
        self.next: Iterator[float] = iter(())

    def __call__(self) -> float:
        return next(self.next)

    def script(self, *values: float) -> None:
        self.next = iter(values)


def registry(draws: Draws) -> tuple[AdapterRegistry, FakeLora]:
    lora = FakeLora()
    return AdapterRegistry(lora, run_now, "base", draw=draws), lora


def test_requests_go_to_the_variant_drawn_and_resolve_to_its_weights() -> None:
    draws = Draws()
    reg, lora = registry(draws)
    asyncio.run(reg.load("faq", "/v1"))
    asyncio.run(reg.load_canary("faq", "/v2", 25.0))
    draws.script(0.1, 0.3, 0.2499, 0.9)
    routes = [reg.route("faq") for _ in range(4)]
    assert [r.variant for r in routes if r] == ["canary", "stable", "canary", "stable"]
    folder = {True: "/v2", False: "/v1"}
    for r in routes:
        assert r is not None
        assert (
            lora.loaded[reg.peft_name("faq", r.variant == "canary") or ""]
            == folder[r.variant == "canary"]
        )
    assert reg.route(None) is None and reg.route("base") is None
    with pytest.raises(ApiError) as caught:
        reg.route("nope")
    assert caught.value.status == 404


def test_counters_belong_to_the_folder_and_restart_when_it_changes() -> None:
    draws = Draws()
    reg, _ = registry(draws)
    asyncio.run(reg.load("faq", "/v1"))
    asyncio.run(reg.load_canary("faq", "/v2", 50.0))
    draws.script(0.9, 0.9, 0.1)
    for _ in range(3):
        route = reg.route("faq")
        assert route is not None
        route.counts.record_request()
        route.counts.record_failure(500 if route.variant == "canary" else 200)
    view = lambda: reg.reports()[0].to_public().model_dump(mode="json", by_alias=True)  # noqa: E731
    assert (view()["requests"], view()["errors"]) == (2, 0)
    assert (view()["canary"]["requests"], view()["canary"]["errors"]) == (1, 1)
    reg.set_canary_percent("faq", 5.0)  # same folder: counts go on
    assert view()["canary"]["requests"] == 1 and view()["canary"]["percent"] == 5.0
    asyncio.run(reg.load("faq", "/broken"))  # failed: /v1 keeps serving and counting
    assert view()["state"] == "Failed" and view()["requests"] == 2
    asyncio.run(reg.load("faq", "/v3"))
    assert (view()["requests"], view()["canary"]["requests"]) == (0, 1)
    asyncio.run(reg.load("faq", "/v2"))  # promotion: the canary's folder is the new stable one
    assert view()["canary"] is None and (view()["requests"], view()["errors"]) == (0, 0)


def test_a_request_that_picked_a_canary_removed_since_goes_to_stable() -> None:
    draws = Draws()
    reg, lora = registry(draws)
    asyncio.run(reg.load("faq", "/v1"))
    asyncio.run(reg.load_canary("faq", "/v2", 50.0))
    draws.script(0.0)
    route = reg.route("faq")
    assert route is not None and route.variant == "canary"
    assert asyncio.run(reg.drop_canary("faq")) is True
    assert lora.loaded[reg.peft_name("faq", canary=True) or ""] == "/v1"
    assert asyncio.run(reg.drop_canary("faq")) is False


def test_a_canary_needs_a_known_adapter_and_a_share_in_range() -> None:
    reg, _ = registry(Draws())
    with pytest.raises(ValueError, match="not known"):
        asyncio.run(reg.load_canary("faq", "/v2", 10.0))
    asyncio.run(reg.load("faq", "/v1"))
    for bad in (0.0, 100.0, float("nan")):
        with pytest.raises(ValueError, match="canary percent must be > 0 and < 100"):
            asyncio.run(reg.load_canary("faq", "/v2", bad))


def test_unloading_a_name_unloads_its_canary_too() -> None:
    reg, lora = registry(Draws())
    asyncio.run(reg.load("faq", "/v1"))
    asyncio.run(reg.load_canary("faq", "/v2", 10.0))
    assert asyncio.run(reg.unload("faq")) is True
    assert lora.loaded == {} and reg.reports() == [] and reg.canary("faq") is None
