"""Adapters on disk and in checkpoints: save, load, merge, and the trainable-only state dict.

Callers: the training loop (`save_adapter` at the end, `trainable_state_dict` /
`load_trainable_state_dict` for exact resume), `kubetune serve` (`load_adapter`) and
`kubetune export --merge` (`merge_and_unload`). The adapter directory is peft's layout
(`adapter_config.json` + `adapter_model.safetensors`) for all four methods, with the tokenizer
files and chat template beside it, so `PeftModel.from_pretrained(base, dir)` reads it once
`kubetune_trainer.methods` is imported (that registers the bottleneck adapter with peft).
Saving and merging go through the method that made the adapter (`registry.loaded_method`):
prefix-tuning saves a gathered state dict itself, qlora merges onto a dequantised base, the
bottleneck adapter and prefix-tuning refuse to merge.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kubetune_trainer.methods.apply import quiet_peft_deprecations
from kubetune_trainer.methods.base import TrainerMethod
from kubetune_trainer.methods.qlora import is_quantized, keep_cpu_weights_trainable
from kubetune_trainer.methods.registry import loaded_method


def save_adapter(
    model: nn.Module,
    out_dir: Path,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the adapter of `model` (a PeftModel) and, if given, the tokenizer to `out_dir`.

    `state_dict` is the full-model state dict to take adapter weights from when the model's own
    parameters are sharded (FSDP2 gathers them first); None reads the model's parameters.
    """
    peft_model = _as_peft(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    _method_of(peft_model).save(peft_model, out_dir, state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))


def load_adapter(base: PreTrainedModel, adapter_dir: Path, *, trainable: bool = False) -> PeftModel:
    """The base with the adapter in `adapter_dir` attached (frozen unless `trainable`).

    A QLoRA adapter needs the 4-bit base (`load_base_model` with method qlora) to reproduce the
    trained model exactly; on a full-precision base it still loads and runs.
    """
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"adapter directory {adapter_dir} has no adapter_config.json")
    if is_quantized(base):
        keep_cpu_weights_trainable(base)
    with quiet_peft_deprecations():
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
    if not trainable:  # peft 0.21 leaves a prefix-tuning prompt encoder trainable regardless
        model.requires_grad_(False)
    return model


def merge_and_unload(model: nn.Module) -> PreTrainedModel:
    """A plain transformers model with the LoRA update folded into its weights.

    QLoRA's base is dequantised to its compute dtype first, then merged at full precision.
    Raises `MergeNotSupportedError` for the bottleneck adapter (nonlinear) and prefix-tuning
    (its prefix is not a weight): serve those with the adapter attached instead.
    """
    peft_model = _as_peft(model)
    return _method_of(peft_model).merge(peft_model)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the parameters that train (the adapter only), by parameter name."""
    return {
        name: param.detach().clone()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def load_trainable_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` (from `trainable_state_dict`) into `model`'s trainable parameters.

    The names must match the trainable parameters exactly; a mismatch raises and lists them.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(params.keys() - state.keys()), sorted(state.keys() - params.keys())
    if missing or unexpected:
        raise KeyError(
            f"trainable state does not match the model: missing {missing[:5]} "
            f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])


def _method_of(model: PeftModel) -> TrainerMethod:
    return loaded_method(model.active_peft_config, quantized=is_quantized(model))


def _as_peft(model: nn.Module) -> PeftModel:
    if not isinstance(model, PeftModel):
        raise TypeError(
            f"expected a peft.PeftModel (from apply_method), got {type(model).__name__}"
        )
    return model
