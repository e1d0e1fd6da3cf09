"""Graceful stops and checkpoint timing: SIGTERM sets a flag, all processes agree each step.

Kubernetes sends SIGTERM when a pod is deleted, evicted, preempted or its node drained (torchrun
passes it on to every worker) and SIGKILLs it `terminationGracePeriodSeconds` later. The
handler only sets a flag; after each optimizer step the loop asks `Agreement.poll`, which takes
the maximum of (stop requested, checkpoint timer due) over all processes with one tiny
all-reduce, so every process stops, or checkpoints, after the same step: a process that
stopped alone would leave the others hanging in a collective. The loop then writes a checkpoint
and raises `failures.Preempted` (exit 6, reason `Preempted`). Called by `train`.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only once a loop polls: the CLI reads STOP on every failure
    from kubetune_trainer.distributed import Runtime


class StopFlag:
    """Set by SIGTERM (or a test); read at step boundaries."""

    def __init__(self) -> None:
        self.requested = False
        self.signal: int | None = None

    def set(self, signum: int, _frame: FrameType | None = None) -> None:
        self.requested, self.signal = True, signum


STOP = StopFlag()  # one per process: signal handlers are process-wide


@contextmanager
def sigterm_stops() -> Iterator[StopFlag]:
    """Route SIGTERM to `STOP` while training (main thread only), then restore the handler."""
    if threading.current_thread() is not threading.main_thread():
        yield STOP
        return
    previous = signal.signal(signal.SIGTERM, STOP.set)
    try:
        yield STOP
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Decision:
    stop: bool = False
    timer_due: bool = False


class Agreement:
    """The per-step vote on stopping and on the checkpoint timer."""

    def __init__(self, rt: Runtime, every_minutes: float, flag: StopFlag = STOP) -> None:
        self.rt, self.flag = rt, flag
        self.every_seconds = every_minutes * 60.0
        self.last_save = time.monotonic()

    def saved(self) -> None:
        """Restart the checkpoint timer."""
        self.last_save = time.monotonic()

    def poll(self) -> Decision:
        timer = self.every_seconds > 0 and time.monotonic() - self.last_save >= self.every_seconds
        votes = [float(self.flag.requested), float(timer)]
        if self.rt.distributed:
            import torch
            import torch.distributed as dist

            tensor = torch.tensor(votes, device=self.rt.device)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            votes = tensor.tolist()
        return Decision(stop=votes[0] > 0, timer_due=votes[1] > 0)
