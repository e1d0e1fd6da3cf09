"""`METHODS`: the traits of every `method.type`, and the few questions asked of them by method.

Everyone who needs to know something method-specific asks here instead of comparing
`method.type`: `kubetune_api.memory`, the operator's spec validation (`gpu_problems`), and the
trainer's `kubetune_trainer.methods` (`method_notes`, `traits_of`). A test checks that every
literal of the schema's `MethodSpec.type` has an entry.
"""

from __future__ import annotations

from kubetune_api.finetune import MethodSpec
from kubetune_api.methods.adapter import AdapterTraits
from kubetune_api.methods.base import MethodTraits
from kubetune_api.methods.lora import LoraTraits
from kubetune_api.methods.prefix import PrefixTraits
from kubetune_api.methods.qlora import QloraTraits

METHODS: dict[str, MethodTraits] = {
    t.name: t for t in (LoraTraits(), QloraTraits(), AdapterTraits(), PrefixTraits())
}


def traits_of(method: MethodSpec) -> MethodTraits:
    """The traits of `method.type`."""
    return METHODS[method.type]


def method_notes(method: MethodSpec) -> list[str]:
    """Harmless oddities worth a log line: fields set that the chosen method ignores."""
    fields = MethodSpec.model_fields
    return [
        f"method.{fields[name].alias or name} is ignored by method.type {method.type!r}"
        for name in traits_of(method).ignored_fields(method)
    ]


def gpu_problems(method: MethodSpec, gpus_per_node: int) -> list[str]:
    """A method that needs a GPU given none: the operator's `spec.resources` check."""
    traits = traits_of(method)
    if traits.needs_gpu and gpus_per_node == 0:
        return [
            f"spec.method.type: {traits.name} needs a GPU ({traits.gpu_reason}), "
            f"got gpusPerNode {gpus_per_node}"
        ]
    return []
