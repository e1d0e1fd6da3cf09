"""The runner's body cache: the newest resourceVersion wins, so a run never plans from old state."""

from __future__ import annotations

from kubetune_operator.cache import BodyCache


def test_body_cache_keeps_the_newest_resource_version() -> None:
    cache = BodyCache()
    key = ("ns", "faq")
    cache.offer(key, {"metadata": {"resourceVersion": "20"}, "status": {"phase": "Running"}})
    cache.offer(key, {"metadata": {"resourceVersion": "19"}, "status": {"phase": "Pending"}})
    assert cache.get(key) == {"metadata": {"resourceVersion": "20"}, "status": {"phase": "Running"}}
    cache.offer(key, {"metadata": {"resourceVersion": "21"}, "status": {"phase": "Failed"}})
    assert (cache.get(key) or {})["status"]["phase"] == "Failed"
    cache.drop(key)
    assert cache.get(key) is None
