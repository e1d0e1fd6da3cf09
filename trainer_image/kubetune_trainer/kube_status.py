"""Training progress into the FineTuneJob's status: `kubectl get ftj` shows PROGRESS and LOSS.

`KubeStatusReporter` is a `progress.Reporter`. It merge-patches `status.progress` and
`status.metrics` (per task too, for a multi-task mixture) of one FineTuneJob through the
status subresource, with in-cluster credentials (the pod's ServiceAccount, allowed to patch
only this object) or KUBECONFIG elsewhere. Patches go out on a background thread, at most one
per `min_interval` seconds and always the latest values, so a slow API server never slows a
training step; the last values are flushed at the end. API errors are logged and training
continues. Added by `reporting.extra_reporters` when KUBETUNE_FINETUNEJOB=<namespace>/<name>
is set. Knows nothing of the operator.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kubetune_api.names import FINETUNEJOB_PLURAL as PLURAL
from kubetune_api.names import GROUP, VERSION
from kubetune_trainer.failures import finite
from kubetune_trainer.progress import Reporter, StepRecord

REQUEST_TIMEOUT = 5.0
log = logging.getLogger("kubetune.trainer.status")
Json = dict[str, Any]


def _finite(value: Any, digits: int) -> float | None:
    """A JSON-safe rounded number (the API server rejects NaN and infinities)."""
    number = finite(value)
    return None if number is None else round(number, digits)


def _clean(data: Json) -> Json:
    return {k: v for k, v in data.items() if v is not None}


def progress_patch(record: StepRecord) -> Json:
    """status.progress and status.metrics for one step record."""
    total = max(record.total_steps, 1)
    return {
        "progress": _clean(
            {
                "step": record.step,
                "totalSteps": record.total_steps,
                "epoch": _finite(record.epoch, 3),
                "percent": _finite(100.0 * record.step / total, 1),
                "etaSeconds": _finite(record.eta_seconds, 0),
            }
        ),
        "metrics": _clean(
            {
                "trainLoss": _finite(record.loss, 4),
                "learningRate": _finite(record.learning_rate, 8),
                "tokensPerSecond": _finite(record.tokens_per_second, 1),
            }
        ),
    }


def eval_patch(metrics: dict[str, Any]) -> Json:
    """status.metrics from eval metrics: evalLoss, and per task of a mixture (`eval_loss/<task>`,
    `accuracy/<task>`) under `tasks`."""
    tasks: dict[str, Json] = {}
    for key, value in metrics.items():
        name, _, task = key.partition("/")
        wire = {"eval_loss": "evalLoss", "accuracy": "accuracy"}.get(name)
        number = _finite(value, 4)
        if task and wire and number is not None:
            tasks.setdefault(task, {})[wire] = number
    return _clean({"evalLoss": _finite(metrics.get("eval_loss"), 4), "tasks": tasks or None})


def _merge(old: Json, new: Json) -> Json:
    out = dict(old)
    for key, value in new.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


class _Sender:
    """Sends the status patches; the only part that touches the network."""

    def __init__(self, namespace: str, name: str, api: Any = None) -> None:
        self.namespace, self.name, self.api = namespace, name, api
        self.failures = 0

    def _client(self) -> Any:
        if self.api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self.api = client.CustomObjectsApi()
        return self.api

    def send(self, patch: Json) -> bool:
        try:
            self._client().patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                self.name,
                {"status": patch},
                _content_type="application/merge-patch+json",
                _request_timeout=REQUEST_TIMEOUT,
            )
        except Exception as err:  # never let status reporting stop training
            self.failures += 1
            if self.failures in (1, 10) or self.failures % 100 == 0:
                log.warning(
                    "could not patch FineTuneJob %s/%s status (%d failures): %s",
                    self.namespace,
                    self.name,
                    self.failures,
                    str(err).splitlines()[0],
                )
            return False
        return True


class KubeStatusReporter(Reporter):
    """Reports progress and metrics into `<namespace>/<name>`'s status, throttled."""

    def __init__(
        self, namespace: str, name: str, *, min_interval: float = 1.0, api: Any = None
    ) -> None:
        self.sender = _Sender(namespace, name, api)
        self.min_interval = min_interval
        self.pending: Json = {}
        self.total_steps = 0
        self.lock = threading.Condition()
        self.stopped = False
        self.thread: threading.Thread | None = None

    # -- Reporter --------------------------------------------------------------------------
    def on_start(self, total_steps: int, info: dict[str, Any]) -> None:
        self.total_steps = total_steps
        step = int(info.get("start_step", 0))
        percent = _finite(100.0 * step / max(total_steps, 1), 1)
        self._queue({"progress": {"step": step, "totalSteps": total_steps, "percent": percent}})
        self.thread = threading.Thread(target=self._loop, name="kube-status", daemon=True)
        self.thread.start()

    def on_step(self, record: StepRecord) -> None:
        self._queue(progress_patch(record))

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        patch = eval_patch(metrics)
        if patch:
            self._queue({"metrics": patch})

    def on_end(self, summary: dict[str, Any]) -> None:
        steps = int(summary.get("steps") or self.total_steps)
        metrics = summary.get("metrics") or {}
        self._queue(
            {
                "progress": {"step": steps, "totalSteps": steps, "percent": 100.0, "etaSeconds": 0},
                "metrics": _clean(
                    {"trainLoss": _finite(metrics.get("train_loss"), 4), **eval_patch(metrics)}
                ),
            }
        )
        self.close()

    def on_failure(self, reason: str, message: str) -> None:
        self.close()

    # -- background sending ----------------------------------------------------------------
    def _queue(self, patch: Json) -> None:
        with self.lock:
            self.pending = _merge(self.pending, patch)
            self.lock.notify()

    def _take(self) -> Json | None:
        with self.lock:
            while not self.pending and not self.stopped:
                self.lock.wait()
            patch, self.pending = self.pending, {}
            return patch or None

    def _loop(self) -> None:
        while True:
            patch = self._take()
            if patch is None:
                return
            started = time.monotonic()
            self.sender.send(patch)
            deadline = started + self.min_interval
            with self.lock:  # wait out the interval (new steps only merge) unless closing
                while not self.stopped and (left := deadline - time.monotonic()) > 0:
                    self.lock.wait(left)

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is pending and stop the thread."""
        with self.lock:
            self.stopped = True
            self.lock.notify()
        if self.thread is not None:
            self.thread.join(timeout)
            self.thread = None
        elif self.pending:
            self.sender.send(self.pending)
        self.pending = {}
