"""QLoRA's traits: LoRA on a base whose decoder projections load in NF4, which needs a GPU.

Weights: the decoder's linear weights in NF4 with double quantisation, 0.5 B + 1/64 B (8-bit
absmax per 64 weights) + 4/16384 B (fp32 absmax per 256 blocks) per weight; embeddings, the
output head and norms stay in the compute dtype. Everything else is LoRA's.
"""

from __future__ import annotations

from kubetune_api.methods.lora import LoraTraits
from kubetune_api.shapes import ModelShape

NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)


class QloraTraits(LoraTraits):
    """LoRA over a 4-bit (bitsandbytes NF4) base."""

    name = "qlora"
    needs_gpu = True
    gpu_reason = "4-bit bitsandbytes"
    quantized_base = True

    def weight_bytes(self, shape: ModelShape, dtype_bytes: int) -> int:
        return int(shape.linear_params * NF4_BYTES_PER_WEIGHT + shape.other_params * dtype_bytes)
