"""What each PEFT method is, torch-free: the fields it reads, its rules and its memory terms.

One `MethodTraits` subclass per `method.type` lives beside this module (`lora`, `qlora`,
`adapter`, `prefix`); `kubetune_api.methods.registry.METHODS` holds one instance of each. Its
readers: `kubetune_api.memory` (parameter counts, weight and activation bytes), the operator's
validation (`needs_gpu`), and the trainer's `kubetune_trainer.methods` (ignored-field notes, the
checkpointing rule), whose own registry adds the torch half of each method.
"""

from __future__ import annotations

from typing import ClassVar

from kubetune_api.finetune import MethodSpec
from kubetune_api.shapes import ModelShape

METHOD_FIELDS = (
    "rank",
    "alpha",
    "dropout",
    "target_modules",
    "num_virtual_tokens",
    "bottleneck_size",
)
"""The `spec.method` fields that size a method (all but `type`), in the schema's order."""


class MethodTraits:
    """One PEFT method's rules; subclasses set the class attributes and the memory terms."""

    name: ClassVar[str]
    """The `method.type` literal."""
    fields: ClassVar[tuple[str, ...]]
    """The `METHOD_FIELDS` this method reads; setting another one earns a note."""
    gradient_checkpointing: ClassVar[bool] = True
    """Whether `training.gradientCheckpointing` can apply (else it is switched off)."""
    checkpointing_off: ClassVar[str] = ""
    """Why checkpointing is switched off, when `gradient_checkpointing` is False."""
    needs_gpu: ClassVar[bool] = False
    """Whether training needs a GPU at all (`gpu_reason` says why)."""
    gpu_reason: ClassVar[str] = ""
    quantized_base: ClassVar[bool] = False
    """Whether the base model loads quantised (4-bit) rather than in the compute dtype."""
    mergeable: ClassVar[bool] = True
    """Whether the trained adapter can be folded into the base weights."""

    def ignored_fields(self, method: MethodSpec) -> list[str]:
        """The fields `method` sets that this method does not read, in the schema's order."""
        return [f for f in METHOD_FIELDS if f not in self.fields and f in method.model_fields_set]

    def trainable_params(self, shape: ModelShape, method: MethodSpec) -> int:
        """Parameters the method trains (the same count peft reports)."""
        raise NotImplementedError

    def weight_bytes(self, shape: ModelShape, dtype_bytes: int) -> int:
        """Base model weights: every parameter in the compute dtype."""
        return shape.total_params * dtype_bytes

    def activation_bytes(self, shape: ModelShape, method: MethodSpec, b: int, mask: int) -> int:
        """What the adapter keeps per token per layer (b: compute dtype bytes, mask: dropout
        mask bytes per element); nothing by default."""
        return 0
