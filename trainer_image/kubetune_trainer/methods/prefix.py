"""Prefix-tuning: the peft `PrefixTuningConfig` a `spec.method` asks for, and its limits.

`apply_method` calls `build_prefix_config`. Prefix-tuning learns `numVirtualTokens` key/value
pairs per layer that peft feeds in as a KV cache; transformers' activation checkpointing cannot
replay a forward that writes into that cache, so checkpointing is switched off for it (with a
warning, see `apply.py`), and the prefix cannot be merged into weights.
"""

from __future__ import annotations

from peft import PrefixTuningConfig, TaskType

from kubetune_api.finetune import MethodSpec

CHECKPOINTING_OFF = (
    "prefix-tuning cannot use gradient checkpointing (its prefix is fed through the KV cache, "
    "which a checkpointed forward cannot replay): training.gradientCheckpointing is switched off"
)


def build_prefix_config(method: MethodSpec) -> PrefixTuningConfig:
    """Learned key/value prefixes of `numVirtualTokens`, no reparametrisation MLP."""
    return PrefixTuningConfig(
        num_virtual_tokens=method.num_virtual_tokens,
        prefix_projection=False,
        task_type=TaskType.CAUSAL_LM,
    )
