"""Checkpoints that resume exactly: adapter weights, optimizer, scheduler, RNG and data position.

Layout: `<output>/checkpoints/step-000040/` holding `trainable.pt` (only parameters that train),
`optimizer.pt`, `scheduler.pt`, `rng-rank<r>.pt` and `state.json`. A checkpoint is written to a
temporary folder and renamed into place, so a crash mid-write never leaves a half checkpoint
that a resume would pick up. Under FSDP2 the full (unsharded) state is gathered with
`torch.distributed.checkpoint.state_dict`, so a run can resume with another number of processes.
Called by the training loop; the operator only reads the folder names (checkpointStep).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from kubetune_trainer.distributed import Runtime

CHECKPOINTS = "checkpoints"
PREFIX = "step-"
_OPTIONS = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


@dataclass
class TrainState:
    """Where the run is: the next step runs micro-batch `batch_in_epoch` of `epoch`."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens_seen: int = 0
    learning_rate: float = 0.0


def checkpoint_dir(output: Path, step: int) -> Path:
    return output / CHECKPOINTS / f"{PREFIX}{step:06d}"


def list_checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = output / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def latest_checkpoint(output: Path) -> Path | None:
    found = list_checkpoints(output)
    return found[-1] if found else None


def _barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    output: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    state: TrainState,
    rt: Runtime,
    keep: int = 2,
) -> Path:
    """Write a checkpoint atomically (collective: every process calls it)."""
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_OPTIONS)
    final = checkpoint_dir(output, state.global_step)
    tmp = final.with_name(f".tmp-{final.name}")
    if rt.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier(rt)
    torch.save(_rng_state(), tmp / f"rng-rank{rt.rank}.pt")
    if rt.is_main:
        torch.save(model_sd, tmp / "trainable.pt")
        torch.save(optim_sd, tmp / "optimizer.pt")
        torch.save(extra, tmp / "scheduler.pt")
    _barrier(rt)
    if rt.is_main:
        (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(rt)
    return final


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rt: Runtime
) -> tuple[TrainState, dict[str, Any]]:
    """Restore model, optimizer and RNG; return the train state and the scheduler/scaler states."""
    model_sd = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
    optim_sd = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=model_sd,
        optim_state_dict=optim_sd,
        options=StateDictOptions(full_state_dict=True, strict=False),
    )
    rng_file = path / f"rng-rank{rt.rank}.pt"
    if not rng_file.exists():  # resumed with more processes than saved: derive from rank 0's
        rng_file = path / "rng-rank0.pt"
    _set_rng_state(torch.load(rng_file, weights_only=False))
    extra = torch.load(path / "scheduler.pt", weights_only=False)
    state = TrainState(**json.loads((path / "state.json").read_text()))
    return state, extra
