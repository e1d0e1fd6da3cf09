"""How many trainer processes a FineTuneJob runs. Pure, a leaf.

Used by `validation` (the batch must divide over the processes), `retry` (the micro-batch an
out-of-memory retry halves) and `preflight` (the memory estimate's world size).
"""

from __future__ import annotations

from kubetune_api.finetune import FineTuneJobSpec


def world_size(spec: FineTuneJobSpec) -> int:
    """Trainer processes: one per GPU on every node (one per node on CPU-only pods)."""
    return spec.resources.nodes * max(1, spec.resources.gpus_per_node)
