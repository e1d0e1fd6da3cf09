"""The run summary (`summary.json`): metrics, data counts, speed, memory, versions, hashes.

Everything a reviewer needs to trust or reproduce a run: what data went in and what was
dropped (and why), what trained (examples per epoch, summed over the attempts that resumed one
another, and whether each epoch trained every example exactly once), how fast, how much memory,
which code. Every number is valid JSON: NaN and infinities are written as null. Written by the main
process at the end of `train.run`; `kubetune` prints its metrics.
"""

from __future__ import annotations

import json
import math
import resource
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import torch

from kubetune_api import TrainerConfig, TrainingSpec
from kubetune_trainer.checkpoint import TrainState
from kubetune_trainer.distributed import Runtime
from kubetune_trainer.prepare import Prepared


class FinishedRun(Protocol):
    """What `build` reads of a finished run; `train.Loop` is one."""

    cfg: TrainerConfig
    t: TrainingSpec
    rt: Runtime
    data: Prepared
    state: TrainState
    micro: int
    accum: int
    real_tokens: int
    padded_tokens: int
    train_seconds: float
    last_loss: float
    first_loss: float | None
    eval_metrics: dict[str, float]
    resolved: dict[str, Any]

    def accounting(self) -> dict[str, Any]: ...


def peak_memory_bytes(device: torch.device) -> int:
    """Peak device memory on CUDA; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for dist in ("kubetune", "torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "absent"
    return found


def build(loop: FinishedRun, info: Any, total_steps: int, adapter_dir: Path) -> dict[str, Any]:
    padded = max(loop.padded_tokens, 1)
    metrics: dict[str, float] = {"train_loss": loop.last_loss, **loop.eval_metrics}
    return {
        "metrics": metrics,
        "first_loss": loop.first_loss,
        "steps": loop.state.global_step,
        "total_steps": total_steps,
        "epochs": loop.t.epochs,
        **loop.accounting(),
        "world_size": loop.rt.world_size,
        "micro_batch_size": loop.micro,
        "gradient_accumulation_steps": loop.accum,
        "tokens_per_second": loop.real_tokens / max(loop.train_seconds, 1e-9),
        "real_tokens": loop.real_tokens,
        "padding_fraction": 1.0 - loop.real_tokens / padded if loop.padded_tokens else 0.0,
        "train_seconds": loop.train_seconds,
        "peak_memory_bytes": peak_memory_bytes(loop.rt.device),
        "trainable_parameters": info.trainable_params,
        "total_parameters": info.total_params,
        "trainable_fraction": info.trainable_fraction,
        "method_notes": list(info.notes),
        "data": {name: stats.to_dict() for name, stats in loop.data.stats.items()},
        "data_hash": loop.data.data_hash,
        "config_hash": loop.cfg.config_hash(),
        "config": loop.cfg.to_wire(),
        "resolved_defaults": loop.resolved,
        "adapter_path": str(adapter_dir),
        "versions": versions(),
    }


def adapter_facts(adapter_dir: Path, output_uri: str | None) -> dict[str, Any]:
    """Where the adapter ends up (its s3:// URI when the output is one), its size and content
    hash (sha256 over its files' names, sizes and sha256s: `storage.transfer.tree_hash`)."""
    from kubetune_trainer.storage.transfer import build_manifest, join

    manifest = build_manifest(adapter_dir)
    facts: dict[str, Any] = {
        "adapter_bytes": manifest["bytes"],
        "adapter_sha256": manifest["sha256"],
    }
    if output_uri and output_uri.startswith("s3://"):
        facts["adapter_path"] = facts["adapter_uri"] = join(output_uri, "adapter")
    return facts


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write(output: Path, summary: dict[str, Any]) -> Path:
    """Write summary.json atomically; strict JSON (`allow_nan=False` after `json_safe`)."""
    path = output / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    text = json.dumps(json_safe(summary), indent=2, ensure_ascii=False, allow_nan=False)
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
