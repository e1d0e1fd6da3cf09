"""The bottleneck adapter's traits (`method.type` adapter): Houlsby adapters after two projections.

One adapter follows `o_proj` and one `down_proj` in every decoder layer (`TARGETS`, which the
trainer's peft tuner wraps too); each is a down- and an up-projection with biases. Nonlinear, so
it cannot be merged into the base weights.
"""

from __future__ import annotations

from kubetune_api.finetune import MethodSpec
from kubetune_api.methods.base import MethodTraits
from kubetune_api.shapes import ModelShape

TARGETS = ("o_proj", "down_proj")
"""The bottleneck adapter follows the last projection of attention and of the MLP."""


class AdapterTraits(MethodTraits):
    """A bottleneck of `bottleneckSize` after each target: `2 h bn + h + bn` parameters."""

    name = "adapter"
    fields = ("dropout", "bottleneck_size")
    mergeable = False

    def trainable_params(self, shape: ModelShape, method: MethodSpec) -> int:
        h, bn = shape.hidden_size, method.bottleneck_size
        return shape.num_layers * len(TARGETS) * (2 * h * bn + h + bn)

    def activation_bytes(self, shape: ModelShape, method: MethodSpec, b: int, mask: int) -> int:
        """Each adapter keeps its input and its two bottleneck-wide intermediates."""
        return len(TARGETS) * (b * shape.hidden_size + 2 * b * method.bottleneck_size)
