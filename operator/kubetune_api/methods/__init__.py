"""The PEFT methods, torch-free: one module of traits per `method.type`, one registry.

`METHODS` (registry.py) maps each `method.type` literal to its `MethodTraits`: the fields it
reads, whether gradient checkpointing applies, whether it needs a GPU or a 4-bit base, whether
it can be merged, and its memory terms. `kubetune_api.memory`, the operator and the trainer's
`kubetune_trainer.methods` read it; nothing else compares `method.type`.
"""

from kubetune_api.methods.base import METHOD_FIELDS, MethodTraits
from kubetune_api.methods.registry import METHODS, gpu_problems, method_notes, traits_of

__all__ = ["METHODS", "METHOD_FIELDS", "MethodTraits", "gpu_problems", "method_notes", "traits_of"]
