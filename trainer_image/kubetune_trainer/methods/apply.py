"""Turn a loaded base model into the trainable model a `spec.method` describes.

The training loop calls `apply_method` once, after `load_base_model` and before sharding. It
returns a `peft.PeftModel` (for all four methods: the bottleneck adapter is registered with peft,
see `bottleneck.py`) whose only trainable parameters are the method's, plus a `MethodInfo`. The
method's peft config, checkpointing rule and notes about the base come from the registry.
Gradient checkpointing, when asked for and possible, is the non-reentrant kind, which needs no
`enable_input_require_grads` hook on the embeddings.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from peft import PeftConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from kubetune_api.finetune import MethodSpec
from kubetune_api.methods import MethodTraits, method_notes
from kubetune_trainer.methods.base import MethodInfo, TrainerMethod
from kubetune_trainer.methods.qlora import count_params, is_quantized, keep_cpu_weights_trainable
from kubetune_trainer.methods.registry import method_for
from kubetune_trainer.methods.validate import check_method

log = logging.getLogger(__name__)


def apply_method(
    model: PreTrainedModel, method: MethodSpec, *, gradient_checkpointing: bool
) -> tuple[PeftModel, MethodInfo]:
    """Wrap `model` with the method's adapter, freeze the rest, set up checkpointing.

    Raises `MethodConfigError` for a method the model cannot take. Prefix-tuning with
    `gradient_checkpointing=True` does not fail: checkpointing is switched off, logged, and
    noted in `MethodInfo.notes`.
    """
    check_method(method, model.config)
    notes = method_notes(method)
    impl = method_for(method)
    checkpointing = _checkpointing_for(impl.traits, gradient_checkpointing, notes)
    _check_base(model, impl, notes)
    set_checkpointing(model, False)  # peft refuses prefix-tuning on a checkpointed model
    peft_model = _wrap(model, impl.build_peft_config(method))
    set_checkpointing(model, checkpointing)
    trainable, total = count_params(peft_model)
    info = MethodInfo(method.type, trainable, total, checkpointing, notes)
    log.info(
        "method %s: %d of %d parameters train (%.4f%%)",
        method.type,
        trainable,
        total,
        100 * info.trainable_fraction,
    )
    return peft_model, info


def build_peft_config(method: MethodSpec) -> PeftConfig:
    """The peft config of `method` (LoRA for lora and qlora)."""
    return method_for(method).build_peft_config(method)


def set_checkpointing(model: PreTrainedModel, enabled: bool) -> None:
    """Non-reentrant activation checkpointing on or off (transformers 5 name, 4.x fallback)."""
    if not model.supports_gradient_checkpointing:
        return
    if enabled:
        kwargs: dict[str, Any] = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    elif hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


def _checkpointing_for(traits: MethodTraits, requested: bool, notes: list[str]) -> bool:
    """Checkpointing as requested, unless the method cannot use it (off, with a warning)."""
    if requested and not traits.gradient_checkpointing:
        log.warning(traits.checkpointing_off)
        notes.append(traits.checkpointing_off)
        return False
    return requested


def _check_base(model: PreTrainedModel, impl: TrainerMethod, notes: list[str]) -> None:
    """Keep a 4-bit base differentiable on the CPU; log what the method says of its base."""
    if is_quantized(model):
        keep_cpu_weights_trainable(model)
    for note in impl.base_notes(model):
        notes.append(note)
        log.warning(note)


def _wrap(model: PreTrainedModel, config: PeftConfig) -> PeftModel:
    with quiet_peft_deprecations():
        peft_model = get_peft_model(model, config)
    assert isinstance(peft_model, PeftModel)
    return peft_model


@contextmanager
def quiet_peft_deprecations() -> Iterator[None]:
    """peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing`: hide that warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        yield
