"""FineTuneJob kopf registrations: made at import into kopf's default registry, state from `PARTS`."""

from __future__ import annotations

import kopf
import pytest

from kubetune_operator import activities
from kubetune_operator.finetune import handlers


def ids(kind: str, module: str = handlers.__name__) -> list[str]:
    found = getattr(kopf.get_default_registry(), kind).get_all_handlers()  # no public listing
    return sorted(h.id for h in found if h.fn.__module__ == module)


def test_register_watches_finetunejobs_their_jobs_pods_and_kueue_workloads() -> None:
    assert ids("_changing") == ["reconcile", "reconcile", "reconcile"]  # create, update, resume
    assert ids("_watching") == ["job", "phase", "pod", "workload"]
    assert ids("_indexing") == ["ftj_job_owners", "ftj_jobs", "ftj_pods", "ftj_workloads"]
    assert ids("_activities") == ["cleanup", "finetunejobs"]
    assert ids("_activities", activities.__name__) == ["login", "settings"]


def test_kopf_keeps_its_bookkeeping_in_annotations() -> None:
    settings = kopf.OperatorSettings()
    activities.configure(settings)
    assert settings.execution.max_workers == activities.KOPF_WORKERS
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)


def test_handlers_say_so_when_cli_did_not_set_their_parts() -> None:
    handlers.PARTS.clear()
    with pytest.raises(RuntimeError, match="FineTuneJob handlers"):
        handlers.PARTS.get()
