"""The memory pre-flight: will this FineTuneJob fit its GPUs? Pure.

`check_memory` runs `kubetune estimate`'s arithmetic (`kubetune_api.memory`, torch-free)
on the attempt's resolved training settings (retry overrides included) against the memory of
one GPU: `spec.resources.gpuMemory`, else the operator's `--gpu-memory` setting (the chart's
`defaults.gpuMemory`). The model's shape comes from the built-in table of Qwen3 configs by
`spec.model.name`; the operator reads no file, so another model gets an Unknown verdict.
`plan` turns the verdict into the `MemoryFits` condition (and a Warning Event when it does not
fit) or, with `spec.strictPreflight`, fails the job before any pod starts. `cache_problems`
checks the download cache (`spec.storage.cacheSize`) against the base model's weights when they
come from s3:// (`validation` refuses the job before any pod starts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kubetune_api.finetune import FineTuneJobSpec
from kubetune_api.memory import GIB, UnknownModelError, estimate_memory, known_shape, parse_size
from kubetune_api.storage import StorageSpec, is_s3
from kubetune_api.trainer_config import TrainerConfig
from kubetune_operator.finetune.retry import apply_overrides
from kubetune_operator.finetune.topology import world_size
from kubetune_operator.settings import Settings

CONDITION = "MemoryFits"


@dataclass(frozen=True)
class MemoryCheck:
    """The verdict: fits (True), does not (False) or cannot tell (None), and why."""

    fits: bool | None
    reason: Literal["Fits", "InsufficientGPUMemory", "UnknownModel"]
    message: str


def gpu_memory(spec: FineTuneJobSpec, settings: Settings) -> tuple[int, str] | None:
    """Bytes of one GPU for this job and where the figure came from; None when unknown."""
    if spec.resources.gpu_memory:
        return parse_size(spec.resources.gpu_memory), "spec.resources.gpuMemory"
    if settings.gpu_memory:
        return parse_size(settings.gpu_memory), "the operator's --gpu-memory"
    return None


def check_memory(
    spec: FineTuneJobSpec, overrides: dict[str, str], settings: Settings
) -> MemoryCheck | None:
    """The verdict for one attempt; None when there is nothing to check (no GPU, no size)."""
    found = gpu_memory(spec, settings)
    if found is None or spec.resources.gpus_per_node == 0:
        return None
    gpu, source = found
    try:
        shape = known_shape(spec.model.name)
    except UnknownModelError as err:
        return MemoryCheck(None, "UnknownModel", f"no estimate: {err}")
    config = TrainerConfig.from_spec(spec).model_copy(
        update={"training": apply_overrides(spec.training, overrides)}
    )
    est = estimate_memory(config, shape, world_size=world_size(spec), memory_limit=gpu)
    need, have = est.total_bytes / GIB, gpu / GIB
    if est.total_bytes <= gpu:
        return MemoryCheck(True, "Fits", f"estimated peak {need:.1f} GiB of {have:.1f} GiB per GPU")
    parts = ", ".join(f"{label} {v / GIB:.1f}" for label, v in est.rows() if v >= GIB / 10)
    return MemoryCheck(
        False,
        "InsufficientGPUMemory",
        f"estimated peak {need:.1f} GiB per GPU exceeds the {have:.1f} GiB of {source} "
        f"({parts} GiB); lower training.microBatchSize or dataset.maxInputTokens, use "
        "method.type qlora, or zeroStage 3 over more GPUs",
    )


def cache_problems(spec: FineTuneJobSpec) -> list[str]:
    """spec.storage.cacheSize against the base model's bf16 weights, when they download from
    s3:// and the model is a known Qwen3 (the download cache must hold them, and the data)."""
    source = spec.model.source
    if source is None or not is_s3(source.uri):
        return []
    try:
        shape = known_shape(spec.model.name)
    except UnknownModelError:
        return []
    size = (spec.storage or StorageSpec()).cache_size
    need, have = shape.total_params * 2, parse_size(size)
    if need <= have:
        return []
    return [
        f"spec.storage.cacheSize: {size} cannot hold the base model {spec.model.name} "
        f"downloaded from {source.uri} (about {need / GIB:.1f} GiB in bf16); raise it"
    ]
