"""Learning-rate schedule: linear warm-up, then cosine, linear or constant decay.

Pure functions of the step, so a resumed run picks up the same learning rate. Called by the
training loop through `build_scheduler`.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_for(total_steps: int, ratio: float) -> int:
    """Number of warm-up steps for a ratio of the total (the seed: the first 10%)."""
    return math.ceil(total_steps * ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, kind: str
) -> LambdaLR:
    warmup = warmup_steps_for(total_steps, warmup_ratio)
    return LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, warmup, kind))
