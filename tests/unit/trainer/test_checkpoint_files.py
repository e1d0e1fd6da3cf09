"""Checkpoint files: atomic, fsynced, loaded with weights_only=True; one termination writer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kubetune_api.termination import EXIT_REASONS, REASONS, ExitCode
from kubetune_trainer.checkpoint import (
    TMP_PREFIX,
    EpochTally,
    TrainState,
    example_digest,
    latest_checkpoint,
    load_checkpoint,
    read_state,
    save_checkpoint,
)
from kubetune_trainer.distributed import Runtime
from kubetune_trainer.failures import writes_termination
from kubetune_trainer.summary import write

RT = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _model() -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt


def test_checkpoint_round_trip_with_weights_only(tmp_path: Path) -> None:
    model, opt = _model()
    state = TrainState(global_step=3, epoch=1, cursor=16, tallies=[EpochTally(32, 7)])
    state.run = {"run_id": "r", "data_hash": "d", "config": {"a": 1}}
    path = save_checkpoint(tmp_path, model, opt, {"scheduler": {"last_epoch": 3}}, state, RT)
    assert path == latest_checkpoint(tmp_path) and path.name == "step-000003"
    assert not list(path.parent.glob(f"{TMP_PREFIX}*"))
    expected = torch.rand(3)
    fresh = torch.nn.Linear(4, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    loaded, extra = load_checkpoint(path, fresh, fresh_opt, RT)
    assert torch.rand(3).equal(expected)  # RNG restored to the saved state
    assert (
        loaded.cursor == 16
        and loaded.tallies == [EpochTally(32, 7)]
        and loaded.run["run_id"] == "r"
    )
    assert extra == {"scheduler": {"last_epoch": 3}}
    assert torch.equal(fresh.weight, model.weight)


def test_a_half_written_checkpoint_is_never_listed_and_is_cleaned(tmp_path: Path) -> None:
    model, opt = _model()
    save_checkpoint(tmp_path, model, opt, {}, TrainState(global_step=2), RT)
    crashed = tmp_path / "checkpoints" / f"{TMP_PREFIX}step-000004"
    crashed.mkdir()
    (crashed / "trainable.pt").write_bytes(b"half")
    assert latest_checkpoint(tmp_path).name == "step-000002"  # type: ignore[union-attr]
    save_checkpoint(tmp_path, model, opt, {}, TrainState(global_step=4), RT)
    assert not crashed.exists() and read_state(latest_checkpoint(tmp_path)).global_step == 4  # type: ignore[arg-type]


def test_a_pickled_object_in_a_checkpoint_is_refused(tmp_path: Path) -> None:
    model, opt = _model()
    path = save_checkpoint(tmp_path, model, opt, {}, TrainState(global_step=1), RT)
    torch.save({"evil": Path("/")}, path / "scheduler.pt")  # an arbitrary class: code on load
    with pytest.raises(Exception, match=r"[Ww]eights only"):
        load_checkpoint(path, model, opt, RT)


def test_epoch_tally_is_order_free() -> None:
    a, b = EpochTally(), EpochTally()
    a.add([1, 2, 3])
    b.add([3])
    b.add([2, 1])
    assert a == b and a.examples == 3
    assert len({example_digest(i) for i in range(1000)}) == 1000


def test_preempted_is_exit_6_and_its_own_reason() -> None:
    assert ExitCode.PREEMPTED == 6 and REASONS[ExitCode.PREEMPTED] == "Preempted"
    assert EXIT_REASONS[6] == "Preempted" and EXIT_REASONS[4] == "OutOfMemory"


@pytest.mark.parametrize(
    ("code", "rank", "told_to_stop", "writes"),
    [
        (ExitCode.SUCCESS, 0, False, True),
        (ExitCode.SUCCESS, 1, False, False),
        (ExitCode.PREEMPTED, 0, True, True),
        (ExitCode.PREEMPTED, 3, True, False),
        (ExitCode.INVALID_DATA, 2, False, False),
        (ExitCode.OUT_OF_MEMORY, 3, False, True),  # only that worker knows
        (ExitCode.ERROR, 0, True, False),  # torn down after another worker failed
    ],
)
def test_one_process_writes_the_termination_file(
    code: ExitCode, rank: int, told_to_stop: bool, writes: bool
) -> None:
    assert writes_termination(code, rank=rank, told_to_stop=told_to_stop) is writes


def test_summary_is_strict_json(tmp_path: Path) -> None:
    write(tmp_path, {"metrics": {"train_loss": math.nan, "eval": [math.inf, 1.0]}, "n": 3})
    text = (tmp_path / "summary.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "metrics": {"train_loss": None, "eval": [None, 1.0]},
        "n": 3,
    }
