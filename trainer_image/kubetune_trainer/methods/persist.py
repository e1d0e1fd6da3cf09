"""Adapters on disk and in checkpoints: save, load, merge, and the trainable-only state dict.

Callers: the training loop (`save_adapter` at the end, `trainable_state_dict` /
`load_trainable_state_dict` for exact resume), `kubetune serve` (`load_adapter`) and
`kubetune export --merge` (`merge_and_unload`). The adapter directory is peft's layout
(`adapter_config.json` + `adapter_model.safetensors`) for all four methods, with the tokenizer
files and chat template beside it, so `PeftModel.from_pretrained(base, dir)` reads it once
`kubetune_trainer.methods` is imported (that registers the bottleneck adapter with peft).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from peft import PeftModel
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kubetune_trainer.methods.apply import quiet_peft_deprecations
from kubetune_trainer.methods.base import MergeNotSupportedError
from kubetune_trainer.methods.bottleneck import PEFT_TYPE as BOTTLENECK_PEFT_TYPE
from kubetune_trainer.methods.qlora import is_quantized, keep_cpu_weights_trainable, merge_qlora


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
    if state_dict is not None and peft_model.active_peft_config.is_prompt_learning:
        _save_prefix(peft_model, out_dir, state_dict)
    else:
        peft_model.save_pretrained(str(out_dir), state_dict=state_dict)
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
    config = peft_model.active_peft_config
    if config.is_prompt_learning:
        raise MergeNotSupportedError(
            "prefix-tuning (method.type 'prefix-tuning') cannot be merged into the base weights: "
            "its learned prefix is fed as a KV cache, not a weight; serve it with the adapter"
        )
    if config.peft_type == BOTTLENECK_PEFT_TYPE:
        raise MergeNotSupportedError(
            "the bottleneck adapter (method.type 'adapter') cannot be merged into the base "
            "weights: it is nonlinear; serve it with the adapter"
        )
    if is_quantized(peft_model):
        compute = getattr(peft_model.config.quantization_config, "bnb_4bit_compute_dtype", None)
        return merge_qlora(peft_model, compute or torch.float32)
    merged: PreTrainedModel = peft_model.merge_and_unload()
    return merged


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


def _as_peft(model: nn.Module) -> PeftModel:
    if not isinstance(model, PeftModel):
        raise TypeError(
            f"expected a peft.PeftModel (from apply_method), got {type(model).__name__}"
        )
    return model
