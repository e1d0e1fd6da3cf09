"""PEFT methods of the trainer: validate, load the base, apply, save, reload, merge.

The training loop uses, in order: `validate_method` (before any weights load),
`load_base_model`, `apply_method`, then `trainable_state_dict` / `load_trainable_state_dict`
for checkpoints and `save_adapter` at the end; `kubetune serve` uses `load_adapter`, `kubetune
export --merge` uses `merge_and_unload`. Methods: lora, qlora (NF4 base + LoRA), adapter (a
Houlsby bottleneck registered with peft as KUBETUNE_BOTTLENECK) and prefix-tuning, one module
each (`lora.py`, `qlora.py`, `adapter.py` over `bottleneck.py`, `prefix.py`), collected in
`registry.TRAINER_METHODS`; their torch-free traits are `kubetune_api.methods.METHODS`.

Importing this package registers the bottleneck adapter with peft (a few dict entries), so that
`peft.PeftModel.from_pretrained` can read its adapter directories.
"""

from kubetune_trainer.methods import bottleneck as _bottleneck
from kubetune_trainer.methods.apply import apply_method, build_peft_config, set_checkpointing
from kubetune_trainer.methods.base import (
    MergeNotSupportedError,
    MethodConfigError,
    MethodInfo,
    TrainerMethod,
)
from kubetune_trainer.methods.loading import load_base_model
from kubetune_trainer.methods.persist import (
    load_adapter,
    load_trainable_state_dict,
    merge_and_unload,
    save_adapter,
    trainable_state_dict,
)
from kubetune_trainer.methods.registry import TRAINER_METHODS, loaded_method, method_for
from kubetune_trainer.methods.validate import check_method, validate_method

_bottleneck.register()

__all__ = [
    "TRAINER_METHODS",
    "MergeNotSupportedError",
    "MethodConfigError",
    "MethodInfo",
    "TrainerMethod",
    "apply_method",
    "build_peft_config",
    "check_method",
    "load_adapter",
    "load_base_model",
    "load_trainable_state_dict",
    "loaded_method",
    "merge_and_unload",
    "method_for",
    "save_adapter",
    "set_checkpointing",
    "trainable_state_dict",
    "validate_method",
]
