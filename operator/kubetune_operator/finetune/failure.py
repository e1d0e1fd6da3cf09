"""A failed attempt as the operator reads it from the pod.

The trainer writes one JSON line to /dev/termination-log and exits with a code; the contract
(exit codes, reasons, the line and its parser) is `kubetune_api.termination`, shared with the
trainer. `Failure` is what `observe` makes of a failed pod. A leaf; used by `observe` (which
builds Failures), `retry` (which decides on them) and the plan steps.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed, as read from the pod (termination message, exit code, reason)."""

    reason: str
    message: str = ""
    exit_code: int | None = None
    step: int | None = None
    checkpoint: str | None = None
