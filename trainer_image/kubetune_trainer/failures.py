"""How a training run ends, the trainer's side: failures with a reason, and writing the line.

The contract itself (exit codes, reasons, the JSON line and its parser) is
`kubetune_api.termination`, shared with the operator. This module adds the exceptions that carry
a reason (`TrainingFailure` and kin), where the termination file is, who writes it (one process:
`writes_termination`), and the writers of the failure and `Succeeded` lines. Called by the CLI
around `train.run`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubetune_api.termination import REASONS, SUCCEEDED, ExitCode, TerminationReason

DEFAULT_TERMINATION_LOG = "/dev/termination-log"


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


class Preempted(TrainingFailure):
    """Asked to stop (SIGTERM: pod deleted, evicted, preempted); a checkpoint was written first."""

    code = ExitCode.PREEMPTED


# Outcomes every process reaches together (the config and data are the same everywhere, the loss
# is all-reduced, the stop is agreed): the global rank 0 alone reports them. An out-of-memory
# error or a crash is one process's own, so that process reports it, unless it had been told to
# stop: then it is being torn down (torchrun stops the others when one worker fails) and the
# real reason is the failed worker's.
AGREED_OUTCOMES = frozenset(
    {
        ExitCode.SUCCESS,
        ExitCode.INVALID_CONFIG,
        ExitCode.INVALID_DATA,
        ExitCode.NAN_LOSS,
        ExitCode.PREEMPTED,
    }
)


def writes_termination(code: ExitCode, *, rank: int, told_to_stop: bool) -> bool:
    """Whether this process writes the termination file for this outcome (one writer only)."""
    if code in AGREED_OUTCOMES:
        return rank == 0
    return not told_to_stop


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
        SUCCEEDED,
        f"adapter at {summary.get('adapter_path')}",
        int(ExitCode.SUCCESS),
        step=summary.get("steps"),
        evalLoss=finite(metrics.get("eval_loss")),
        trainLoss=finite(metrics.get("train_loss")),
        adapterUri=summary.get("adapter_uri"),
        adapterBytes=summary.get("adapter_bytes"),
        adapterSha256=summary.get("adapter_sha256"),
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
