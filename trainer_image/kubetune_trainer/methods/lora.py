"""LoRA (and QLoRA's adapter half): the peft `LoraConfig` a `spec.method` asks for.

`apply_method` calls `build_lora_config` for both `lora` and `qlora`; the 4-bit base of QLoRA is
`qlora.py`'s business, peft picks the 4-bit LoRA layer by itself.
"""

from __future__ import annotations

from peft import LoraConfig, TaskType

from kubetune_api.finetune import MethodSpec
from kubetune_trainer.methods.validate import ALL_LINEAR


def build_lora_config(method: MethodSpec) -> LoraConfig:
    """rank, alpha, dropout and target modules; bias untouched, causal-LM task."""
    targets: list[str] | str = (
        ALL_LINEAR if method.target_modules == [ALL_LINEAR] else list(method.target_modules)
    )
    return LoraConfig(
        r=method.rank,
        lora_alpha=method.alpha,  # type: ignore[arg-type]  # peft annotates int, accepts float
        lora_dropout=method.dropout,
        target_modules=targets,
        bias="none",
        task_type=TaskType.CAUSAL_LM,
    )
