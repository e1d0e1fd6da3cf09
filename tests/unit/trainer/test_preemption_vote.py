"""SIGTERM becomes a flag (not a death), and the per-step vote on stopping and the timer."""

from __future__ import annotations

import os
import signal
import time

import torch

from kubetune_api.finetune import TrainingSpec
from kubetune_trainer.distributed import Runtime
from kubetune_trainer.preemption import Agreement, StopFlag, sigterm_stops

RT = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_sigterm_sets_the_flag_while_training_and_the_old_handler_returns() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_stops() as flag:
        flag.requested = False
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert flag.requested and flag.signal == signal.SIGTERM
    flag.requested = False
    assert signal.getsignal(signal.SIGTERM) == before


def test_the_vote_says_stop_and_when_the_timer_is_due() -> None:
    flag = StopFlag()
    vote = Agreement(RT, every_minutes=0.0005, flag=flag)  # 30 ms
    assert not vote.poll().timer_due
    time.sleep(0.05)
    assert vote.poll().timer_due
    vote.saved()
    assert not vote.poll().timer_due and not vote.poll().stop
    flag.set(signal.SIGTERM)
    assert vote.poll().stop
    assert not Agreement(RT, every_minutes=0, flag=flag).poll().timer_due  # 0: timer off


def test_checkpoints_are_on_by_default() -> None:
    t = TrainingSpec()
    assert t.checkpoint_every_minutes == 10 and t.save_every_steps is None
