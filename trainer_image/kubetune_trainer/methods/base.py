"""Shared types of the PEFT methods package: its error and the summary of an applied method.

Every module of `kubetune_trainer.methods` uses these; the training loop reads `MethodInfo` for
its log line and run summary, and catches `MethodConfigError` to report a configuration problem
(a permanent failure: retrying will not help).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


class MethodConfigError(ValueError):
    """A `spec.method` that cannot work with the chosen model; `problems` lists every reason."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class MergeNotSupportedError(ValueError):
    """The adapter cannot be folded into the base weights (bottleneck adapter, prefix-tuning)."""


@dataclass(frozen=True)
class MethodInfo:
    """What `apply_method` did: parameter counts, whether checkpointing is on, and notes."""

    method: str
    trainable_params: int
    total_params: int
    gradient_checkpointing: bool
    notes: list[str] = field(default_factory=list)

    @property
    def trainable_fraction(self) -> float:
        """Trainable parameters over all parameters (4-bit weights counted unpacked)."""
        return self.trainable_params / self.total_params if self.total_params else 0.0
