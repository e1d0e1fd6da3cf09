"""Defaults that fit the hardware: `precision: auto` and `gradientCheckpointing: auto`, resolved
once at the start of a run.

- precision: bf16 on a GPU that has it, fp16 (with loss scaling) on one that does not; on the CPU
  bf16 only where it is fast, i.e. with AMX-BF16 tiles (Sapphire Rapids and later). A CPU with
  only AVX512-BF16 dot products, and every other CPU, trains in fp32: there bf16 autocast casts
  weights on every op and runs slower than fp32 (BENCHMARKS.md, issue 14).
- gradient checkpointing: on only when the memory pre-flight (`kubetune_api.memory`) says the
  run does not fit the device without it, with the longest prepared example as the sequence
  length; the limit is the GPU's free memory, or on the CPU the smaller of MemAvailable and the
  cgroup's memory.max.

An explicit value in the config always wins. `train.fit` calls `resolve_defaults` after the
data is prepared; the result is printed and written to summary.json (`resolved_defaults`).
Knows nothing about the training loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from kubetune_api import TrainerConfig
from kubetune_api.memory import ModelShape, checkpointing_needed

CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")
CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is absent)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def auto_precision(device: torch.device, flags: set[str] | None = None) -> tuple[str, str]:
    """(precision, why) for `precision: auto` on `device`."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{torch.cuda.get_device_name(device)} has bf16"
        return "fp16", f"{torch.cuda.get_device_name(device)} has no bf16: fp16 with loss scaling"
    if "amx_bf16" in (cpu_flags() if flags is None else flags):
        return "bf16", "CPU with AMX-BF16"
    return "fp32", "CPU without AMX-BF16: bf16 autocast would be slower than fp32"


def memory_limit(device: torch.device) -> tuple[int | None, str]:
    """(bytes, where from) the run may use on `device`; None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), "free GPU memory"
    limits = []
    available = _meminfo_available()
    if available is not None:
        limits.append((available, "MemAvailable"))
    cgroup = _cgroup_limit()
    if cgroup is not None:
        limits.append((cgroup, "cgroup memory.max"))
    return min(limits) if limits else (None, "unknown")


def _meminfo_available() -> int | None:
    try:
        for line in MEMINFO.read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_limit() -> int | None:
    try:
        text = CGROUP_MEMORY_MAX.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def resolve_defaults(
    cfg: TrainerConfig, device: torch.device, model_config: dict[str, Any], seq_len: int
) -> tuple[TrainerConfig, dict[str, Any]]:
    """`cfg` with its `auto` values replaced, and what was resolved and why (for the summary)."""
    t = cfg.training
    resolved: dict[str, Any] = {}
    values: dict[str, Any] = {}
    if t.precision == "auto":
        precision, why = auto_precision(device)
        values["training.precision"] = precision
        resolved["precision"] = {"value": precision, "why": why}
    if t.gradient_checkpointing == "auto":
        limit, source = memory_limit(device)
        kind: Literal["cuda", "cpu"] = "cuda" if device.type == "cuda" else "cpu"
        shaped = cfg.with_values(values) if values else cfg
        shape = ModelShape.from_config(model_config)
        on = checkpointing_needed(shaped, shape, limit, seq_len=seq_len, device=kind)
        gib = "unknown" if limit is None else f"{limit / 2**30:.1f} GiB"
        why = f"{'does not fit' if on else 'fits'} without it in {gib} ({source})"
        values["training.gradientCheckpointing"] = on
        resolved["gradient_checkpointing"] = {"value": on, "why": why}
    return (cfg.with_values(values) if values else cfg), resolved


def describe(resolved: dict[str, Any]) -> str:
    """One line for the log: `precision auto -> fp32 (why); gradientCheckpointing auto -> ...`."""
    names = {"precision": "precision", "gradient_checkpointing": "gradientCheckpointing"}
    parts = [f"{names[k]}: auto -> {v['value']} ({v['why']})" for k, v in resolved.items()]
    return "; ".join(parts)
