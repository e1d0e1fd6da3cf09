"""The shared reconcile runner, driven through both kinds' wiring against an in-memory `Kube`.

Coalescing of concurrent triggers, deadline requeues, API errors -> kopf's error kinds, and a
ModelDeployment whose object the API server rejects (400/422). No cluster: `FakeKube` keeps
objects in dicts and answers the way the API server would for what the operator asks.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from typing import Any

import kopf
import pytest

from kubetune_operator import names
from kubetune_operator.finetune.plan_types import Indexes
from kubetune_operator.finetune.reconcile import FineTuneJobs
from kubetune_operator.kube import Kube, KubeError
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.runner import Outcome, Runner
from kubetune_operator.serving import names as mdep_names
from kubetune_operator.serving.reconcile import ModelDeployments
from kubetune_operator.settings import Settings
from kubetune_operator.status import Event

Json = dict[str, Any]
KEY = ("ns", "faq")
NO_CHILDREN = Indexes({}, {})
FTJ_SPEC: Json = {
    "model": {"name": "Qwen/Qwen3-8B"},
    "dataset": {"train": {"pvc": {"claimName": "data", "path": "train.jsonl"}}},
    "resources": {"gpusPerNode": 1},
    "output": {"pvc": {"claimName": "out", "path": "faq"}},
}
MDEP_SPEC: Json = {"models": [{"name": "faq", "model": "Qwen/Qwen3-8B", "gpus": 1}]}


class FakeKube(Kube):
    """Objects in memory, keyed (kind, namespace, name); `errors` makes a call fail instead."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Json] = {}
        self.calls: list[tuple[str, str]] = []  # (method, kind or name)
        self.errors: dict[tuple[str, str], KubeError] = {}  # (method, kind or name) -> error
        self.gate: threading.Event | None = None  # when set up, `apply` waits for it
        self.entered = threading.Event()
        self.version = 0

    def _record(self, method: str, what: str) -> None:
        self.calls.append((method, what))
        if (method, what) in self.errors:
            raise self.errors[(method, what)]

    def count(self, method: str, what: str) -> int:
        return self.calls.count((method, what))

    def put(self, obj: Json) -> Json:
        self.version += 1
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(self.version)
        meta = stored["metadata"]
        self.objects[(stored["kind"], meta["namespace"], meta["name"])] = stored
        return copy.deepcopy(stored)

    def apply(self, obj: Json) -> Json:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        self._record("apply", obj["kind"])
        return self.put(obj)

    def _read(self, kind: str, namespace: str, name: str) -> Json | None:
        self._record("read", kind)
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def _patch(self, kind: str, namespace: str, name: str, patch: Json) -> Json | None:
        self._record("patch", kind)
        found = self.objects.get((kind, namespace, name))
        if found is None:
            return None
        status = {**(found.get("status") or {}), **patch}
        return self.put({**found, "status": {k: v for k, v in status.items() if v is not None}})

    def read_finetunejob(self, namespace: str, name: str) -> Json | None:
        return self._read("FineTuneJob", namespace, name)

    def patch_finetunejob_status(self, namespace: str, name: str, patch: Json) -> Json | None:
        return self._patch("FineTuneJob", namespace, name, patch)

    def read_modeldeployment(self, namespace: str, name: str) -> Json | None:
        return self._read("ModelDeployment", namespace, name)

    def patch_modeldeployment_status(self, namespace: str, name: str, patch: Json) -> Json | None:
        return self._patch("ModelDeployment", namespace, name, patch)

    def list_labelled(
        self, api_version: str, plural: str, namespace: str, selector: str
    ) -> list[Json]:
        label, _, value = selector.partition("=")
        kind = {"deployments": "Deployment", "services": "Service", "configmaps": "ConfigMap"}[
            plural
        ]
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in self.objects.items()
            if k == kind and ns == namespace and o["metadata"].get("labels", {}).get(label) == value
        ]

    def delete_object(self, api_version: str, plural: str, namespace: str, name: str) -> None:
        self._record("delete", name)
        kind = {"deployments": "Deployment", "services": "Service", "configmaps": "ConfigMap"}[
            plural
        ]
        self.objects.pop((kind, namespace, name), None)

    def delete_job(self, namespace: str, name: str) -> None:
        self._record("delete", name)
        self.objects.pop(("Job", namespace, name), None)


def custom_resource(kind: str, spec: Json) -> Json:
    meta = {"name": KEY[1], "namespace": KEY[0], "uid": "u1", "generation": 1}
    return {"apiVersion": names.API_VERSION, "kind": kind, "metadata": meta, "spec": spec}


class Posted(list[tuple[str, Event]]):
    """The Events a runner posted: (object name, Event)."""

    def __call__(self, body: Json, event: Event) -> None:
        self.append((body["metadata"]["name"], event))


def finetunejobs(spec: Json = FTJ_SPEC) -> tuple[FakeKube, FineTuneJobs, Posted]:
    kube, posted = FakeKube(), Posted()
    kube.put(custom_resource("FineTuneJob", spec))
    return kube, FineTuneJobs(kube, Settings(), OperatorMetrics(), posted, workers=4), posted


def modeldeployments(spec: Json = MDEP_SPEC) -> tuple[FakeKube, ModelDeployments, Posted]:
    kube, posted = FakeKube(), Posted()
    kube.put(custom_resource("ModelDeployment", spec))
    return kube, ModelDeployments(kube, Settings(), posted, workers=2), posted


# -- coalescing -----------------------------------------------------------------------------


def test_triggers_during_a_run_coalesce_into_one_follow_up_run() -> None:
    kube, ftj, posted = finetunejobs()
    kube.gate = threading.Event()

    async def scenario() -> None:
        first = asyncio.create_task(ftj.runner.run(KEY, NO_CHILDREN, trigger="create"))
        await asyncio.to_thread(kube.entered.wait, 5)  # the first run is applying children
        others = [asyncio.create_task(ftj.runner.run(KEY, NO_CHILDREN)) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert kube.gate is not None
        kube.gate.set()
        await asyncio.gather(first, *others)

    asyncio.run(scenario())
    assert kube.count("apply", "ServiceAccount") == 2  # the first run and one follow-up, not six
    assert kube.count("read", "FineTuneJob") == 1  # the follow-up planned from its own patch
    assert [e.reason for _, e in posted] == ["AttemptStarted"]
    ftj.runner.close()


def test_a_full_trigger_folded_into_a_queued_run_makes_that_run_full() -> None:
    runs: list[bool] = []

    async def scenario() -> None:
        gate = asyncio.Event()

        async def sync(key: tuple[str, str], full: bool, context: None) -> Outcome | None:
            runs.append(full)
            await gate.wait()
            return None

        runner: Runner[None] = Runner("Thing", sync, workers=1)
        first = asyncio.create_task(runner.run(KEY, None))
        await asyncio.sleep(0.01)
        queued = [asyncio.create_task(runner.run(KEY, None, full=f)) for f in (False, True, False)]
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(first, *queued)
        runner.close()

    asyncio.run(scenario())
    assert runs == [False, True]


# -- requeue --------------------------------------------------------------------------------


def test_a_deadline_schedules_a_run_without_any_event() -> None:
    triggers: list[str] = []
    metrics = OperatorMetrics()

    async def scenario() -> None:
        async def sync(key: tuple[str, str], full: bool, context: None) -> Outcome | None:
            triggers.append("run")
            return Outcome(
                {"metadata": {"name": "x"}}, requeue_after=0.0 if len(triggers) == 1 else None
            )

        runner: Runner[None] = Runner("Thing", sync, workers=1, metrics=metrics)
        await runner.run(KEY, None)
        assert runner.keys[KEY].timer is not None
        await asyncio.sleep(0.7)  # MIN_REQUEUE (0.5 s) after a deadline that has passed
        assert runner.keys[KEY].timer is None
        runner.close()

    asyncio.run(scenario())
    assert triggers == ["run", "run"]
    deadline = metrics.registry.get_sample_value(
        "kubetune_operator_reconcile_duration_seconds_count", {"trigger": "deadline"}
    )
    assert deadline == 1.0


def test_a_pending_attempt_is_requeued_until_its_timeout_and_forgotten_when_deleted() -> None:
    _, ftj, _ = finetunejobs({**FTJ_SPEC, "pendingTimeoutSeconds": 600})

    async def scenario() -> None:
        await ftj.runner.run(KEY, NO_CHILDREN, full=True)  # attempt 0 starts
        assert ftj.runner.keys[KEY].timer is None
        await ftj.runner.run(KEY, NO_CHILDREN)  # its Job is not seen yet: Pending, a deadline
        timer = ftj.runner.keys[KEY].timer
        assert timer is not None and 590 < timer.when() - asyncio.get_running_loop().time() < 602
        ftj.runner.observe(KEY, {}, deleted=True)
        assert (
            timer.cancelled() and KEY not in ftj.runner.keys and ftj.runner.bodies.get(KEY) is None
        )

    asyncio.run(scenario())
    ftj.runner.close()


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [(503, kopf.TemporaryError), (429, kopf.TemporaryError), (403, kopf.PermanentError)],
)
def test_api_errors_become_kopf_error_kinds(status: int, kind: type[Exception]) -> None:
    kube, ftj, _ = finetunejobs()
    kube.errors[("read", "FineTuneJob")] = KubeError(status, "Reason", "no")
    with pytest.raises(kind) as raised:
        asyncio.run(ftj.runner.handle(KEY, NO_CHILDREN, full=True, trigger="create"))
    if isinstance(raised.value, kopf.TemporaryError):
        assert raised.value.delay == 5
    errors = ftj.metrics.registry.get_sample_value(
        "kubetune_operator_reconcile_errors_total", {"reason": "Reason"}
    )
    assert errors == 1.0
    ftj.runner.close()


def test_with_a_logger_a_failed_child_reconcile_is_only_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube, ftj, _ = finetunejobs()
    kube.errors[("read", "FineTuneJob")] = KubeError(500, "InternalError", "etcd is slow")
    logger = logging.getLogger("test.runner")
    with caplog.at_level(logging.WARNING, logger="test.runner"):
        asyncio.run(ftj.runner.handle(KEY, NO_CHILDREN, trigger="child", logger=logger))
    assert "reconcile of FineTuneJob ns/faq (child) failed: 500 InternalError" in caplog.text
    ftj.runner.close()


def test_modeldeployment_handlers_retry_every_api_error() -> None:
    kube, mdep, _ = modeldeployments()
    kube.errors[("read", "ModelDeployment")] = KubeError(403, "Forbidden", "no")
    with pytest.raises(kopf.TemporaryError):
        asyncio.run(mdep.runner.handle(KEY, None))
    mdep.runner.close()


# -- ModelDeployment plans carried out ------------------------------------------------------


def test_a_modeldeployment_is_applied_pruned_and_its_status_patched() -> None:
    kube, mdep, posted = modeldeployments()
    stale: Json = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "faq-old",
            "namespace": "ns",
            "labels": mdep_names.labels("faq", "old"),
            "annotations": {mdep_names.ANNOTATION_MDEP: "faq"},
        },
        "spec": {},
    }
    kube.put(stale)
    other = copy.deepcopy(stale)  # same label value, another ModelDeployment's annotation
    other["metadata"].update(name="faq-other", annotations={mdep_names.ANNOTATION_MDEP: "faq2"})
    kube.put(other)
    asyncio.run(mdep.runner.handle(KEY, None))
    assert kube.count("apply", "Service") == 1 and kube.count("apply", "Deployment") == 1
    assert (
        kube.calls.count(("delete", "faq-old")) == 1 and ("delete", "faq-other") not in kube.calls
    )
    status = kube.objects[("ModelDeployment", "ns", "faq")]["status"]
    assert status["phase"] == "Progressing" and status["ready"] == "0/1"
    assert [(n, e.type, e.reason) for n, e in posted] == [("faq", "Normal", "Progressing")]
    asyncio.run(mdep.runner.handle(KEY, None))  # nothing changed: no patch, no Event
    assert kube.count("patch", "ModelDeployment") == 1 and len(posted) == 1
    mdep.runner.close()


@pytest.mark.parametrize("status", [400, 422])
def test_an_object_the_api_server_rejects_fails_the_modeldeployment(status: int) -> None:
    kube, mdep, posted = modeldeployments()
    kube.errors[("apply", "Deployment")] = KubeError(status, "Invalid", "spec.replicas: bad")
    asyncio.run(mdep.runner.handle(KEY, None))
    stored = kube.objects[("ModelDeployment", "ns", "faq")]["status"]
    assert stored["phase"] == "Failed"
    assert stored["message"] == "the API server rejected Deployment faq-faq: spec.replicas: bad"
    assert stored["conditions"][0]["reason"] == "Rejected"
    assert not [c for c in kube.calls if c[0] == "delete"]  # nothing pruned after a rejection
    assert [(e.type, e.reason) for _, e in posted] == [("Warning", "Rejected")]
    mdep.runner.close()


def test_other_apply_errors_are_retried_and_leave_the_status_alone() -> None:
    kube, mdep, posted = modeldeployments()
    kube.errors[("apply", "Deployment")] = KubeError(500, "InternalError", "try again")
    with pytest.raises(kopf.TemporaryError):
        asyncio.run(mdep.runner.handle(KEY, None))
    assert "status" not in kube.objects[("ModelDeployment", "ns", "faq")] and posted == []
    mdep.runner.close()


def test_an_invalid_modeldeployment_spec_fails_without_any_child() -> None:
    kube, mdep, _ = modeldeployments({"models": []})
    asyncio.run(mdep.runner.handle(KEY, None))
    status = kube.objects[("ModelDeployment", "ns", "faq")]["status"]
    assert status["phase"] == "Failed" and status["conditions"][0]["reason"] == "InvalidSpec"
    assert not [c for c in kube.calls if c[0] in ("apply", "delete")]
    mdep.runner.close()
