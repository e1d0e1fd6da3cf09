"""ModelDeployment kopf registrations: what wakes the reconciler, and the FineTuneJob index key."""

from __future__ import annotations

from typing import Any

import kopf

from kubetune_operator.serving import handlers
from kubetune_operator.serving.handlers import jobs_of


def test_jobs_of_tolerates_any_shape() -> None:
    spec: dict[str, Any] = {
        "models": [
            {"name": "a", "adapter": {"fineTuneJob": "faq"}},
            {"name": "b", "adapter": {"path": "/x"}},
            {"name": "c", "adapter": {"fineTuneJob": "faq"}},
            {"name": "d"},
            "not a model",
        ]
    }
    assert jobs_of(spec) == ["faq"]
    assert jobs_of({}) == [] and jobs_of({"models": None}) == []


def test_register_watches_modeldeployments_deployments_and_finetunejobs() -> None:
    registry = kopf.get_default_registry()  # the handlers register at import, as kopf's examples

    def ids(kind: str) -> list[str]:  # kopf has no public listing of a registry's handlers
        found = getattr(registry, kind).get_all_handlers()
        return sorted(h.id for h in found if h.fn.__module__ == handlers.__name__)

    assert ids("_watching") == ["mdep-adapter", "mdep-child"]
    assert ids("_changing") == ["mdep", "mdep", "mdep", "mdep-forget"]  # create, update, resume
    assert ids("_indexing") == ["mdep_by_ftj"]
