"""How a training run ends: exit codes and the one-line JSON termination reason.

The trainer writes the reason to the termination file (Kubernetes reads
`/dev/termination-log` into the container's terminated state); the operator reads it back and
decides whether to retry (OutOfMemory: smaller micro-batch; NaNLoss: lower learning rate from
the last good checkpoint) or fail. A run that succeeds writes a line too (reason `Succeeded`,
with its final eval and train loss): the operator reads a search trial's result from it.
Called by the CLI around `train.run`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
MAX_MESSAGE_BYTES = 4096  # the kubelet keeps at most 4096 bytes of a termination message


class ExitCode(IntEnum):
    """Process exit codes; the operator maps them (and the JSON reason) to retries."""

    SUCCESS = 0
    ERROR = 1
    INVALID_CONFIG = 2
    INVALID_DATA = 3
    OUT_OF_MEMORY = 4
    NAN_LOSS = 5


REASONS = {
    ExitCode.ERROR: "Error",
    ExitCode.INVALID_CONFIG: "InvalidConfig",
    ExitCode.INVALID_DATA: "InvalidData",
    ExitCode.OUT_OF_MEMORY: "OutOfMemory",
    ExitCode.NAN_LOSS: "NaNLoss",
}


class TrainingFailure(RuntimeError):
    """A failure with a known reason; carries the step and the last good checkpoint."""

    code = ExitCode.ERROR

    def __init__(self, message: str, *, step: int | None = None, checkpoint: str | None = None):
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


class NonFiniteLoss(TrainingFailure):
    """The loss became NaN or infinite; training stopped before the optimizer step."""

    code = ExitCode.NAN_LOSS


class OutOfMemory(TrainingFailure):
    """The device ran out of memory."""

    code = ExitCode.OUT_OF_MEMORY


@dataclass
class TerminationReason:
    """The JSON object written to the termination file."""

    reason: str
    message: str
    exitCode: int
    step: int | None = None
    checkpoint: str | None = None
    evalLoss: float | None = None
    trainLoss: float | None = None

    def to_json(self) -> str:
        text = json.dumps(
            {k: v for k, v in asdict(self).items() if v is not None}, ensure_ascii=False
        )
        if len(text.encode()) <= MAX_MESSAGE_BYTES:
            return text
        self.message = self.message[: MAX_MESSAGE_BYTES // 2] + "…"
        return self.to_json()

    @classmethod
    def parse(cls, text: str) -> TerminationReason | None:
        """Read a termination message back (the operator's side); None if it is not ours."""
        try:
            data = json.loads(text)
            return cls(**data)
        except (ValueError, TypeError):
            return None


def termination_log_path(explicit: str | None) -> Path | None:
    """--termination-log, else $KUBETUNE_TERMINATION_LOG, else /dev/termination-log if present."""
    chosen = explicit or os.environ.get("KUBETUNE_TERMINATION_LOG")
    if chosen:
        return Path(chosen)
    default = Path(DEFAULT_TERMINATION_LOG)
    return default if default.exists() else None


def write_termination(
    path: Path | None,
    code: ExitCode,
    message: str,
    *,
    step: int | None = None,
    checkpoint: str | None = None,
) -> str:
    """Write the reason (if there is a file to write) and return the JSON line."""
    line = TerminationReason(
        REASONS.get(code, "Error"), message, int(code), step, checkpoint
    ).to_json()
    _write(path, line)
    return line


def _write(path: Path | None, line: str) -> None:
    if path is not None:
        # The reason is also on stderr; a read-only log must not mask the real failure.
        with contextlib.suppress(OSError):
            path.write_text(line + "\n", encoding="utf-8")


def write_success(path: Path | None, summary: Mapping[str, Any]) -> str:
    """Write the `Succeeded` line of a finished run (final losses, steps, adapter path)."""
    metrics = summary.get("metrics") or {}
    line = TerminationReason(
        "Succeeded",
        f"adapter at {summary.get('adapter_path')}",
        int(ExitCode.SUCCESS),
        step=summary.get("steps"),
        evalLoss=finite(metrics.get("eval_loss")),
        trainLoss=finite(metrics.get("train_loss")),
    ).to_json()
    _write(path, line)
    return line


def finite(value: Any) -> float | None:
    """A JSON-safe float, or None (json.dumps would write NaN, which no JSON parser accepts,
    and the API server rejects NaN and infinities)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA OOM (torch.OutOfMemoryError) or host MemoryError."""
    import torch

    return isinstance(err, torch.OutOfMemoryError | MemoryError)
