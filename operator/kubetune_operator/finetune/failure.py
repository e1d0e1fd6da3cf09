"""The trainer's side of a failed attempt as the operator reads it: exit codes, the JSON reason.

The trainer writes one JSON line to /dev/termination-log (`{"reason": "OutOfMemory", "exitCode":
4, "step": ..., ...}`) and exits with a code from `EXIT_REASONS`; `parse_termination` reads the
line back and `Failure` is what `observe` makes of a failed pod. A leaf; used by `observe` (which
builds Failures), `retry` (which decides on them) and the plan steps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

EXIT_REASONS = {2: "InvalidConfig", 3: "InvalidData", 4: "OutOfMemory", 5: "NaNLoss"}


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed, as read from the pod (termination message, exit code, reason)."""

    reason: str
    message: str = ""
    exit_code: int | None = None
    step: int | None = None
    checkpoint: str | None = None


def parse_termination(message: str | None) -> dict[str, Any]:
    """The trainer's one-line JSON reason, or {} when the message is not ours."""
    try:
        data = json.loads(message or "")
    except ValueError:
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("reason"), str) else {}
