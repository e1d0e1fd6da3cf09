"""Prefix-tuning: the peft `PrefixTuningConfig` a `spec.method` asks for, its checks and save quirk.

`PREFIX` is the registry's entry for `method.type` prefix-tuning. Prefix-tuning learns
`numVirtualTokens` key/value pairs per layer that peft feeds in as a KV cache; the torch-free
traits (`kubetune_api.methods.prefix`) say why checkpointing is switched off for it, and the
prefix cannot be merged into weights. peft saves a prefix from the live module, so a sharded
model's gathered state dict is written here instead.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel, PrefixTuningConfig, TaskType
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import save_file

from kubetune_api.finetune import MethodSpec
from kubetune_api.methods import METHODS
from kubetune_api.methods.prefix import PrefixTraits
from kubetune_trainer.methods.base import TrainerMethod


class PrefixMethod(TrainerMethod):
    """Learned key/value prefixes; also owns any other prompt-learning adapter peft loads."""

    traits = METHODS[PrefixTraits.name]
    peft_type = "PREFIX_TUNING"
    merge_refusal = (
        "prefix-tuning (method.type 'prefix-tuning') cannot be merged into the base weights: "
        "its learned prefix is fed as a KV cache, not a weight; serve it with the adapter"
    )

    def build_peft_config(self, method: MethodSpec) -> PrefixTuningConfig:
        return build_prefix_config(method)

    def problems(self, method: MethodSpec, model_config: Any, max_seq_len: int | None) -> list[str]:
        positions = getattr(model_config, "max_position_embeddings", None)
        if positions is None:
            return []
        tokens = method.num_virtual_tokens
        if tokens >= positions:
            return [
                f"method.numVirtualTokens ({tokens}) must be < the model's max_position_embeddings "
                f"({positions})"
            ]
        if max_seq_len is not None and tokens + max_seq_len > positions:
            return [
                f"method.numVirtualTokens ({tokens}) + the longest sequence ({max_seq_len}) must be <= "
                f"the model's max_position_embeddings ({positions})"
            ]
        return []

    def owns(self, config: PeftConfig) -> bool:
        return bool(config.is_prompt_learning)

    def save(
        self, model: PeftModel, out_dir: Path, state_dict: dict[str, torch.Tensor] | None
    ) -> None:
        if state_dict is None:
            super().save(model, out_dir, state_dict)
        else:
            _save_prefix(model, out_dir, state_dict)


def build_prefix_config(method: MethodSpec) -> PrefixTuningConfig:
    """Learned key/value prefixes of `numVirtualTokens`, no reparametrisation MLP."""
    return PrefixTuningConfig(
        num_virtual_tokens=method.num_virtual_tokens,
        prefix_projection=False,
        task_type=TaskType.CAUSAL_LM,
    )


def _save_prefix(model: PeftModel, out_dir: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """peft saves a prefix from the live (maybe sharded) module and ignores `state_dict`."""
    key = f"prompt_encoder.{model.active_adapter}.embedding.weight"
    if key not in state_dict:
        raise KeyError(f"state_dict has no {key!r}, the prefix-tuning weights")
    config = copy.deepcopy(model.active_peft_config)
    config.inference_mode = True
    config.save_pretrained(str(out_dir))
    tensors = {"prompt_embeddings": state_dict[key].detach().cpu().contiguous()}
    save_file(tensors, str(out_dir / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})


PREFIX = PrefixMethod()
