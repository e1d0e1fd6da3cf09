"""ModelDeployment status derived from Deployment statuses: phase, ready, conditions, patch."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kubetune_api.deployment import ModelDeploymentStatus
from kubetune_operator.serving.adapters import Waiting
from kubetune_operator.serving.status import (
    ModelState,
    derive_status,
    failed_status,
    rollout,
    status_patch,
    transition_event,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
URL = "http://chat-router.team-a.svc:8000/v1"
Json = dict[str, Any]


def deployment(
    ready: int, replicas: int = 2, updated: int | None = None, reason: str = "ReplicaSetUpdated"
) -> Json:
    return {
        "metadata": {"generation": 2},
        "status": {
            "observedGeneration": 2,
            "replicas": replicas,
            "updatedReplicas": replicas if updated is None else updated,
            "readyReplicas": ready,
            "conditions": [{"type": "Progressing", "status": "True", "reason": reason}],
        },
    }


def derive(models: list[ModelState], router: Json | None = None) -> ModelDeploymentStatus:
    return derive_status(ModelDeploymentStatus(), models, router, URL, 3, NOW)


def test_all_ready_is_available() -> None:
    models = [
        ModelState("large", 1, None, deployment(1, 1)),
        ModelState("small", 2, None, deployment(2, 2)),
    ]
    status = derive(models, router=deployment(1, 1))
    assert (status.phase, status.ready, status.endpoint) == ("Available", "3/3", URL)
    assert status.observed_generation == 3
    assert status.conditions and status.conditions[0].reason == "Available"
    assert status.conditions[0].status == "True"
    assert [(m.name, m.ready_replicas) for m in status.models or []] == [("large", 1), ("small", 2)]


def test_not_ready_yet_is_progressing_and_router_counts() -> None:
    models = [
        ModelState("large", 1, None, deployment(0, 1)),
        ModelState("small", 1, None, deployment(1, 1)),
    ]
    assert derive(models, deployment(1, 1)).phase == "Progressing"
    ready = [
        ModelState("large", 1, None, deployment(1, 1)),
        ModelState("small", 1, None, deployment(1, 1)),
    ]
    status = derive(ready, deployment(0, 1))
    assert status.phase == "Progressing" and status.ready == "2/2"
    assert "router" in (status.message or "")


def test_rolling_to_a_new_adapter_is_progressing() -> None:
    mid_roll = deployment(2, replicas=3, updated=1)  # surge pod not ready yet
    status = derive([ModelState("faq", 2, "pvc://out/b/adapter", mid_roll)])
    assert status.phase == "Progressing"
    assert status.models and status.models[0].adapter == "pvc://out/b/adapter"


def test_stalled_or_lost_readiness_is_degraded() -> None:
    stalled = deployment(0, 1, reason="ProgressDeadlineExceeded")
    assert rollout(stalled, 1) == "stalled"
    lost = deployment(1, 2, reason="NewReplicaSetAvailable")
    assert rollout(lost, 2) == "stalled"
    status = derive([ModelState("faq", 2, None, lost)])
    assert status.phase == "Degraded" and status.ready == "1/2"


def test_stale_generation_is_rolling() -> None:
    d = deployment(1, 1)
    d["metadata"]["generation"] = 3
    assert rollout(d, 1) == "rolling"
    assert rollout(None, 1) == "rolling"


def test_waiting_for_finetunejob_is_pending() -> None:
    wait = Waiting("WaitingForFineTuneJob", "FineTuneJob faq is Running, not Succeeded")
    status = derive([ModelState("faq", 1, None, waiting=wait)])
    assert status.phase == "Pending" and status.ready == "0/1"
    assert status.conditions and status.conditions[0].reason == "WaitingForFineTuneJob"
    assert "faq is Running" in (status.message or "")


def test_invalid_spec_fails_naming_the_field() -> None:
    status = failed_status(ModelDeploymentStatus(), ["spec.server.port: too low"], 1, NOW)
    assert status.phase == "Failed"
    assert status.conditions and status.conditions[0].reason == "InvalidSpec"
    assert "spec.server.port" in (status.message or "")


def test_patch_only_what_changed_and_events_on_transitions() -> None:
    first = derive([ModelState("faq", 1, None, deployment(0, 1))])
    wire = first.to_wire()
    again = derive_status(
        ModelDeploymentStatus.model_validate(wire),
        [ModelState("faq", 1, None, deployment(0, 1))],
        None,
        URL,
        3,
        NOW,
    )
    assert status_patch(wire, again) == {}
    assert transition_event(first, again) is None
    done = derive([ModelState("faq", 1, None, deployment(1, 1))])
    assert set(status_patch(wire, done)) >= {"phase", "ready", "conditions"}
    event = transition_event(first, done)
    assert event is not None and (event.type, event.reason) == ("Normal", "Available")
    failed = failed_status(first, ["spec: bad"], 3, NOW)
    warning = transition_event(first, failed)
    assert warning is not None and (warning.type, warning.reason) == ("Warning", "InvalidSpec")
