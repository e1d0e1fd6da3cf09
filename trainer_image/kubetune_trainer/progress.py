"""Progress reporting: a terminal progress bar, JSON lines, and a pluggable reporter protocol.

The training loop calls a `Reporter` at start, on each logging step, after each evaluation and
at the end; `Reporters` fans out to several. The operator's status reporter (which patches the
FineTuneJob's status) implements the same methods. Only the main process reports.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, TextIO


@dataclass
class StepRecord:
    """What the loop knows after an optimizer step."""

    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    tokens_per_second: float
    elapsed_seconds: float

    @property
    def eta_seconds(self) -> float:
        if self.step == 0:
            return 0.0
        return self.elapsed_seconds / self.step * (self.total_steps - self.step)


class Reporter:
    """No-op base; subclasses override what they need."""

    def on_start(self, total_steps: int, info: dict[str, Any]) -> None:
        """Called once, before the first step."""

    def on_step(self, record: StepRecord) -> None:
        """Called every `loggingSteps` optimizer steps."""

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        """Called after each evaluation."""

    def on_end(self, summary: dict[str, Any]) -> None:
        """Called once with the run summary after a successful run."""

    def on_failure(self, reason: str, message: str) -> None:
        """Called once when the run fails."""


class Reporters(Reporter):
    """Fans each call out to several reporters."""

    def __init__(self, reporters: list[Reporter]) -> None:
        self.reporters = reporters

    def on_start(self, total_steps: int, info: dict[str, Any]) -> None:
        for r in self.reporters:
            r.on_start(total_steps, info)

    def on_step(self, record: StepRecord) -> None:
        for r in self.reporters:
            r.on_step(record)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        for r in self.reporters:
            r.on_eval(step, metrics)

    def on_end(self, summary: dict[str, Any]) -> None:
        for r in self.reporters:
            r.on_end(summary)

    def on_failure(self, reason: str, message: str) -> None:
        for r in self.reporters:
            r.on_failure(reason, message)


class JsonLinesReporter(Reporter):
    """One JSON object per line: {"event": "step", "step": 3, "loss": ..., "lr": ..., ...}."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def _emit(self, event: str, **fields: Any) -> None:
        fields = {"event": event, "time": round(time.time(), 3), **fields}
        self.stream.write(json.dumps(fields, ensure_ascii=False) + "\n")
        self.stream.flush()

    def on_start(self, total_steps: int, info: dict[str, Any]) -> None:
        self._emit("start", total_steps=total_steps, **info)

    def on_step(self, record: StepRecord) -> None:
        data = asdict(record)
        data["lr"] = data.pop("learning_rate")
        data["eta_seconds"] = round(record.eta_seconds, 1)
        self._emit("step", **data)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self._emit("eval", step=step, **metrics)

    def on_end(self, summary: dict[str, Any]) -> None:
        self._emit("end", metrics=summary.get("metrics", {}))

    def on_failure(self, reason: str, message: str) -> None:
        self._emit("failure", reason=reason, message=message)


class TqdmReporter(Reporter):
    """A progress bar on the terminal (stderr), with loss and tokens/s in its postfix."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.last_step = 0

    def on_start(self, total_steps: int, info: dict[str, Any]) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total_steps, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True
        )
        self.last_step = int(info.get("start_step", 0))
        self.bar.update(self.last_step)

    def on_step(self, record: StepRecord) -> None:
        if self.bar is None:
            return
        self.bar.update(record.step - self.last_step)
        self.last_step = record.step
        self.bar.set_postfix(loss=f"{record.loss:.4f}", tok_s=f"{record.tokens_per_second:.0f}")

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_end(self, summary: dict[str, Any]) -> None:
        self._close()

    def on_failure(self, reason: str, message: str) -> None:
        self._close()
