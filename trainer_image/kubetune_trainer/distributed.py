"""Processes, devices and sharding: one process per GPU (torchrun), or one plain process.

`init_runtime` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and starts the
process group: NCCL on GPUs, gloo on CPU. `shard_model` applies ZeRO-style sharding with
PyTorch FSDP2 (`fully_shard`) directly, because accelerate's and Trainer's FSDP settings fall
back to DDP on CPU: stage 2 shards gradients and optimizer state and keeps parameters gathered
after forward (`reshard_after_forward=False`); stage 3 also reshards parameters. Stage 0 with
several processes replicates with DDP. Called by the training loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Runtime:
    """Where this process runs and who its peers are."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_runtime(device: str | None = None) -> Runtime:
    """Start (or join) the process group if torchrun launched several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Runtime(rank=rank, world_size=world, local_rank=local, device=dev)


def shutdown(rt: Runtime) -> None:
    """Leave the process group cleanly."""
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks (each becomes one FSDP unit)."""
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def shard_model(
    model: nn.Module, rt: Runtime, zero_stage: int, param_dtype: torch.dtype | None
) -> nn.Module:
    """Wrap for data parallelism: FSDP2 for stages 2/3, DDP for stage 0; identity alone."""
    if not rt.distributed:
        return model
    if zero_stage == 0:
        from torch.nn.parallel import DistributedDataParallel

        ids = [rt.device.index] if rt.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    reshard = zero_stage == 3
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, reshard_after_forward=reshard, mp_policy=mp)
    fully_shard(model, reshard_after_forward=reshard, mp_policy=mp)
    return model


@contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce/reduce-scatter on all but the last micro-batch."""
    target: Any = model
    if hasattr(target, "set_requires_gradient_sync"):  # FSDP2
        target.set_requires_gradient_sync(enabled)
        yield
        return
    ctx: Any = nullcontext() if enabled or not hasattr(target, "no_sync") else target.no_sync()
    with ctx:
        yield


def barrier(rt: Runtime) -> None:
    """Wait for every process (no-op alone)."""
    if rt.distributed:
        dist.barrier()


def all_reduce_sum(value: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Sum a tensor over all processes (no-op alone)."""
    if rt.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP (FSDP2 wraps in place, so it is already the module)."""
    return (
        model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    )
