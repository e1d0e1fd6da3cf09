"""`TRAINER_METHODS`: the torch half of every `method.type`, and how to find one.

`method_for(spec)` answers for a `spec.method` (validate, load, apply); `loaded_method` for an
adapter peft has loaded (save, merge), from its peft config and whether the base is 4-bit. The
torch-free half of each method is `kubetune_api.methods.METHODS`; a test checks that both
registries cover every literal of `MethodSpec.type`.
"""

from __future__ import annotations

from peft import PeftConfig

from kubetune_api.finetune import MethodSpec
from kubetune_trainer.methods.adapter import ADAPTER
from kubetune_trainer.methods.base import TrainerMethod
from kubetune_trainer.methods.lora import LORA
from kubetune_trainer.methods.prefix import PREFIX
from kubetune_trainer.methods.qlora import QLORA

TRAINER_METHODS: dict[str, TrainerMethod] = {
    m.traits.name: m for m in (LORA, QLORA, ADAPTER, PREFIX)
}


def method_for(method: MethodSpec) -> TrainerMethod:
    """The torch half of `method.type`."""
    return TRAINER_METHODS[method.type]


def loaded_method(config: PeftConfig, *, quantized: bool) -> TrainerMethod:
    """The method behind a loaded adapter: by its peft type, then by a 4-bit base or not.

    An adapter of a peft type none of ours makes (one from the hub) counts as LoRA: peft
    merges it the same way.
    """
    methods = TRAINER_METHODS.values()
    same = [m for m in methods if m.owns(config)] or [m for m in methods if m.traits.mergeable]
    return next((m for m in same if m.traits.quantized_base == quantized), same[0])
