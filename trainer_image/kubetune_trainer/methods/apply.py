"""Turn a loaded base model into the trainable model a `spec.method` describes.

The training loop calls `apply_method` once, after `load_base_model` and before sharding. It
returns a `peft.PeftModel` (for all four methods: the bottleneck adapter is registered with peft,
see `bottleneck.py`) whose only trainable parameters are the method's, plus a `MethodInfo`.
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
from kubetune_trainer.methods.base import MethodInfo
from kubetune_trainer.methods.bottleneck import BottleneckConfig
from kubetune_trainer.methods.lora import build_lora_config
from kubetune_trainer.methods.prefix import CHECKPOINTING_OFF, build_prefix_config
from kubetune_trainer.methods.qlora import count_params, is_quantized, keep_cpu_weights_trainable
from kubetune_trainer.methods.validate import BOTTLENECK_TARGETS, check_method, method_notes

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
    checkpointing = _checkpointing_for(method, gradient_checkpointing, notes)
    _check_base(model, method, notes)
    set_checkpointing(model, False)  # peft refuses prefix-tuning on a checkpointed model
    peft_model = _wrap(model, build_peft_config(method))
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
    if method.type in ("lora", "qlora"):
        return build_lora_config(method)
    if method.type == "prefix-tuning":
        return build_prefix_config(method)
    return BottleneckConfig(
        bottleneck_size=method.bottleneck_size,
        adapter_dropout=method.dropout,
        target_modules=list(BOTTLENECK_TARGETS),
        task_type="CAUSAL_LM",
    )


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


def _checkpointing_for(method: MethodSpec, requested: bool, notes: list[str]) -> bool:
    """Checkpointing as requested, except for prefix-tuning (off, with a warning)."""
    if method.type == "prefix-tuning" and requested:
        log.warning(CHECKPOINTING_OFF)
        notes.append(CHECKPOINTING_OFF)
        return False
    return requested


def _check_base(model: PreTrainedModel, method: MethodSpec, notes: list[str]) -> None:
    """Keep a 4-bit base differentiable on the CPU; say so when qlora gets a full base."""
    if is_quantized(model):
        keep_cpu_weights_trainable(model)
    elif method.type == "qlora":
        notes.append("method.type 'qlora' on a base that is not 4-bit: this trains plain LoRA")
        log.warning(notes[-1])


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
