"""Prefix-tuning's traits: learned key/value prefixes, no checkpointing, nothing to merge.

Prefix-tuning learns `numVirtualTokens` key/value pairs per layer that peft feeds in as a KV
cache; transformers' activation checkpointing cannot replay a forward that writes into that
cache, so checkpointing is switched off for it, and the prefix cannot be merged into weights.
"""

from __future__ import annotations

from kubetune_api.finetune import MethodSpec
from kubetune_api.methods.base import MethodTraits
from kubetune_api.shapes import ModelShape

CHECKPOINTING_OFF = (
    "prefix-tuning cannot use gradient checkpointing (its prefix is fed through the KV cache, "
    "which a checkpointed forward cannot replay): training.gradientCheckpointing is switched off"
)


class PrefixTraits(MethodTraits):
    """`numVirtualTokens` keys and values of `kv_width` per layer."""

    name = "prefix-tuning"
    fields = ("num_virtual_tokens",)
    gradient_checkpointing = False
    checkpointing_off = CHECKPOINTING_OFF
    mergeable = False

    def trainable_params(self, shape: ModelShape, method: MethodSpec) -> int:
        return method.num_virtual_tokens * shape.num_layers * 2 * shape.kv_width
