"""The trainer's status reporter: patches, throttling, flush at the end, errors swallowed."""

from __future__ import annotations

import time
from typing import Any

from kubetune_trainer.kube_status import KubeStatusReporter, eval_patch, progress_patch
from kubetune_trainer.progress import StepRecord


class FakeApi:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.fail = fail

    def patch_namespaced_custom_object_status(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))
        if self.fail:
            raise ConnectionError("apiserver down")

    def bodies(self) -> list[dict[str, Any]]:
        return [args[5]["status"] for args, _ in self.calls]


def record(step: int, loss: float = 1.5) -> StepRecord:
    return StepRecord(step, 100, step / 50, loss, 1e-4, 1234.5, float(step))


def test_progress_patch_fields_and_rounding() -> None:
    patch = progress_patch(record(25, 1.234567))
    assert patch["progress"] == {
        "step": 25,
        "totalSteps": 100,
        "epoch": 0.5,
        "percent": 25.0,
        "etaSeconds": 75.0,
    }
    assert patch["metrics"] == {
        "trainLoss": 1.2346,
        "learningRate": 0.0001,
        "tokensPerSecond": 1234.5,
    }


def test_nan_loss_is_left_out() -> None:
    assert "trainLoss" not in progress_patch(record(3, float("nan")))["metrics"]


def test_eval_patch_reports_each_task_of_a_mixture() -> None:
    metrics = {
        "eval_loss": 1.0,
        "accuracy": 0.5,
        "perplexity": 2.7,
        "eval_loss/faq": 0.81234,
        "accuracy/faq": 0.75,
        "perplexity/faq": 2.25,
        "eval_loss/chat": float("nan"),
        "accuracy/chat": 0.25,
    }
    assert eval_patch(metrics) == {
        "evalLoss": 1.0,
        "tasks": {"faq": {"evalLoss": 0.8123, "accuracy": 0.75}, "chat": {"accuracy": 0.25}},
    }
    assert eval_patch({"eval_loss": 2.0}) == {"evalLoss": 2.0}  # one dataset: no tasks


def test_throttled_to_the_latest_values_and_flushed_at_end() -> None:
    api = FakeApi()
    reporter = KubeStatusReporter("ns", "faq", min_interval=0.3, api=api)
    reporter.on_start(100, {"start_step": 0})
    for step in range(1, 51):
        reporter.on_step(record(step))
    reporter.on_eval(50, {"eval_loss": 0.9, "accuracy": 0.5})
    time.sleep(0.1)
    reporter.on_end({"steps": 100, "metrics": {"train_loss": 0.5, "eval_loss": 0.8}})
    bodies = api.bodies()
    assert len(bodies) <= 4, bodies  # 52 reports, a few patches
    assert bodies[-1]["progress"]["percent"] == 100.0
    assert bodies[-1]["metrics"]["evalLoss"] == 0.8
    args, kwargs = api.calls[0]
    assert args[:5] == ("kubetune.io", "v1alpha1", "ns", "finetunejobs", "faq")
    assert kwargs["_content_type"] == "application/merge-patch+json"


def test_api_errors_never_reach_the_training_loop() -> None:
    api = FakeApi(fail=True)
    reporter = KubeStatusReporter("ns", "faq", min_interval=0.0, api=api)
    reporter.on_start(10, {})
    for step in range(1, 11):
        reporter.on_step(record(step))
    reporter.on_failure("NaNLoss", "loss became nan")
    assert api.calls and reporter.sender.failures == len(api.calls)
