"""LoRA's traits: rank-r updates of the chosen projections, and what they cost in memory.

`LoraTraits` is registered as `method.type` lora; `QloraTraits` (qlora.py) extends it. The
activation term is `kubetune_api.memory`'s LoRA part (see that module's docstring).
"""

from __future__ import annotations

from kubetune_api.finetune import MethodSpec
from kubetune_api.methods.base import MethodTraits
from kubetune_api.shapes import ModelShape

LORA_INPUTS = {  # adapted projections that share one input tensor
    "q_proj": "attn_in",
    "k_proj": "attn_in",
    "v_proj": "attn_in",
    "o_proj": "attn_out",
    "gate_proj": "mlp_in",
    "up_proj": "mlp_in",
    "down_proj": "mlp_act",
}


class LoraTraits(MethodTraits):
    """LoRA on `targetModules`: `rank x (in + out)` parameters per adapted projection."""

    name = "lora"
    fields = ("rank", "alpha", "dropout", "target_modules")

    def trainable_params(self, shape: ModelShape, method: MethodSpec) -> int:
        shapes = shape.linear_shapes()
        per_layer = sum(
            method.rank * (a + b)
            for name, (a, b) in shapes.items()
            if name in method.target_modules
        )
        return shape.num_layers * per_layer

    def activation_bytes(self, shape: ModelShape, method: MethodSpec, b: int, mask: int) -> int:
        """peft casts each adapted projection's input to the adapter's fp32 dtype; under
        bf16/fp16 autocast the adapter's first matmul keeps its own compute-dtype copy of that
        input. Dropout (p > 0) keeps its mask and hands the matmul a new tensor, so there is one
        copy per adapted projection at any precision; in fp32 without dropout the matmuls keep
        their (shared) inputs themselves. The rank-r output is kept by the second matmul.
        """
        targets = {n: s for n, s in shape.linear_shapes().items() if n in method.target_modules}
        rank_outputs = len(targets) * b * method.rank
        if method.dropout > 0:
            return rank_outputs + sum((mask + b) * fan_in for fan_in, _ in targets.values())
        if b < 4:
            return rank_outputs + sum(b * fan_in for fan_in, _ in targets.values())
        shared = {LORA_INPUTS.get(n, n): fan_in for n, (fan_in, _) in targets.items()}
        shared.pop("attn_out", None)  # the attention kernel keeps its output already
        return rank_outputs + b * sum(shared.values())
