"""Checkpoints that resume exactly: adapter weights, optimizer, scheduler, RNG and data position.

Layout: `<output>/checkpoints/step-000040/` holding `trainable.pt` (only parameters that train),
`optimizer.pt`, `scheduler.pt`, `rng-rank<r>.pt` and `state.json` (the `TrainState`: step, epoch,
sample cursor, and the run identity of `identity.RunIdentity`). A checkpoint is written into
`.tmp-step-000040/`, every file and the folder are fsynced, then it is renamed into place and the
parent folder fsynced: a crash or SIGKILL mid-write leaves no half checkpoint for a resume to pick
up (`state.json` is written last; a folder without it is never listed). Every file is read with
`torch.load(weights_only=True)`: a checkpoint holds tensors and plain containers only, so nobody
who can write the volume can make a resume run code. Under FSDP2 the full (unsharded) state is
gathered with `torch.distributed.checkpoint.state_dict`, so a run can resume with another number
of processes. Called by the training loop; the operator only reads the folder names.

Test hook: `KUBETUNE_TEST_CHECKPOINT_DELAY=<seconds>` sleeps inside the write (after the tensors,
before `state.json` and the rename) and prints `{"event": "checkpoint_writing", ...}` first, so a
fault test can SIGKILL the trainer in the middle of a write.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
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
TMP_PREFIX = ".tmp-"
STATE_FILE = "state.json"
DELAY_ENV = "KUBETUNE_TEST_CHECKPOINT_DELAY"
_OPTIONS = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


@dataclass
class EpochTally:
    """What one epoch has trained so far: a count and an order-free digest of the examples."""

    examples: int = 0
    digest: int = 0  # sum of example_digest(i) mod 2**64 over the trained examples

    def add(self, indices: list[int]) -> None:
        self.examples += len(indices)
        self.digest = (self.digest + sum(example_digest(i) for i in indices)) % 2**64


@dataclass
class TrainState:
    """Where the run is: the next step starts at example `cursor` of `epoch`'s fixed order.

    `cursor` counts examples (a sample cursor), not batches, so it means the same thing whatever
    micro-batch and accumulation the next attempt uses.
    """

    global_step: int = 0
    epoch: int = 0
    cursor: int = 0
    tokens_seen: int = 0
    learning_rate: float = 0.0
    tallies: list[EpochTally] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)  # identity.RunIdentity.to_dict()

    def tally(self, epoch: int) -> EpochTally:
        while len(self.tallies) <= epoch:
            self.tallies.append(EpochTally())
        return self.tallies[epoch]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        tallies = [EpochTally(**t) for t in data.pop("tallies", [])]
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known, tallies=tallies)


def example_digest(index: int) -> int:
    """A 64-bit mix of an example index (splitmix64): sums of these identify a multiset."""
    z = (index + 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


def checkpoint_dir(output: Path, step: int) -> Path:
    return output / CHECKPOINTS / f"{PREFIX}{step:06d}"


def list_checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = output / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def latest_checkpoint(output: Path) -> Path | None:
    found = list_checkpoints(output)
    return found[-1] if found else None


def read_state(path: Path) -> TrainState:
    """The `state.json` of a checkpoint folder."""
    return TrainState.from_dict(json.loads((path / STATE_FILE).read_text(encoding="utf-8")))


def _barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


def _rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's data and metadata to the device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, text: str) -> None:
    """Write a text file and fsync it."""
    with path.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _save(obj: Any, path: Path) -> None:
    torch.save(obj, path)
    fsync_path(path)


def _test_delay(step: int) -> None:
    delay = float(os.environ.get(DELAY_ENV) or 0)
    if delay > 0:
        print(json.dumps({"event": "checkpoint_writing", "step": step}), flush=True)
        time.sleep(delay)


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
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
    if rt.is_main:
        for stale in final.parent.glob(f"{TMP_PREFIX}*"):  # left by a crash mid-write
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier(rt)
    _save(_rng_state(), tmp / f"rng-rank{rt.rank}.pt")
    if rt.is_main:
        _save(model_sd, tmp / "trainable.pt")
        _save(optim_sd, tmp / "optimizer.pt")
        _save(extra, tmp / "scheduler.pt")
    _barrier(rt)
    if rt.is_main:
        _test_delay(state.global_step)
        write_durably(tmp / STATE_FILE, json.dumps(asdict(state), indent=2))
        fsync_path(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        fsync_path(final.parent)
        for old in list_checkpoints(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(rt)
    return final


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rt: Runtime
) -> tuple[TrainState, dict[str, Any]]:
    """Restore model, optimizer and RNG; return the train state and the scheduler/scaler states."""
    set_state_dict(
        model,
        optimizer,
        model_state_dict=_load(path / "trainable.pt"),
        optim_state_dict=_load(path / "optimizer.pt"),
        options=StateDictOptions(full_state_dict=True, strict=False),
    )
    rng_file = path / f"rng-rank{rt.rank}.pt"
    if not rng_file.exists():  # resumed with more processes than saved: derive from rank 0's
        rng_file = path / "rng-rank0.pt"
    _set_rng_state(_load(rng_file))
    return read_state(path), _load(path / "scheduler.pt")
