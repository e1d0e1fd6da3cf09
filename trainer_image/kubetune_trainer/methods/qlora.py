"""QLoRA: LoRA on a 4-bit base; the bitsandbytes config, training preparation, dequantised merge.

`QLORA` is the registry's entry for `method.type` qlora: LoRA's config and checks (plus the
bitsandbytes package), a base loaded with `build_bnb_config` and `prepare_quantized_base`, and
`merge_qlora` for merging. `apply_method` and `load_adapter` call `keep_cpu_weights_trainable`
on any 4-bit base, and `is_quantized` / `count_params` are used across the package.

Unlike `peft.prepare_model_for_kbit_training`, preparation here only freezes the base: it
neither casts the non-quantised weights to fp32 (on Qwen3-8B that would add ~5 GB for
the embedding and output head; Qwen3's RMSNorm already computes in fp32) nor turns on gradient
checkpointing (`apply_method` decides that, from `training.gradientCheckpointing`).
bitsandbytes >= 0.48 runs 4-bit layers on the CPU too, which the unit tests use. One trap there
(bitsandbytes 0.50): on a CPU with AVX512-BF16, the first forward in eval mode without grad
repacks each 4-bit weight, for good, into an inference-only layout whose bf16 kernel has no
autograd: later training forwards then differ by ~1e-2 relative and pass no gradient through
the frozen base to earlier layers (silently wrong LoRA gradients). `keep_cpu_weights_trainable`
turns that repacking off and undoes it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel

from kubetune_api.finetune import MethodSpec
from kubetune_api.methods import METHODS
from kubetune_api.methods.qlora import QloraTraits
from kubetune_trainer.methods.lora import LoraMethod


def build_bnb_config(compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """NF4 weights with double quantisation; matmuls run in `compute_dtype`."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,
    )


def prepare_quantized_base(model: PreTrainedModel) -> None:
    """Freeze every base parameter; dtypes and checkpointing are left as they are (see above)."""
    for param in model.parameters():
        param.requires_grad_(False)
    keep_cpu_weights_trainable(model)


def keep_cpu_weights_trainable(model: nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference, and unpack repacked ones."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        weight: Any = module.weight
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                weight.data, weight.quant_state
            )


def is_quantized(model: nn.Module) -> bool:
    """True when any parameter is a bitsandbytes 4-bit weight."""
    return any(type(p).__name__ == "Params4bit" for p in model.parameters())


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, a packed 4-bit weight counted as its unpacked size."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if type(param).__name__ == "Params4bit":
            n *= 2 * param.element_size()
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total


def merge_qlora(model: PeftModel, dtype: torch.dtype) -> PreTrainedModel:
    """Dequantise the base to `dtype`, then add each LoRA update: one rounding, not two.

    peft's own merge would add the update to the dequantised weight and quantise it back to
    4 bits, losing most of a small update; an export wants full-precision merged weights.
    """
    deltas = _lora_deltas(model)
    base: PreTrainedModel = model.unload()
    base.dequantize(dtype=dtype)
    modules = dict(base.named_modules())
    with torch.no_grad():
        for name, delta in deltas.items():
            weight = modules[name].weight
            weight.copy_((weight.float() + delta.float()).to(weight.dtype))
    return base.to(dtype)  # type: ignore[arg-type]  # transformers wraps `to`; mypy misreads it


def _lora_deltas(model: PeftModel) -> dict[str, torch.Tensor]:
    """Each LoRA layer's summed update (over active adapters), keyed by its base-model name."""
    deltas: dict[str, torch.Tensor] = {}
    inner = model.get_base_model()
    for name, module in inner.named_modules():
        if isinstance(module, LoraLayer):
            layer: Any = module
            present = set(layer.lora_A) | set(layer.lora_embedding_A)
            parts = [layer.get_delta_weight(a) for a in layer.active_adapters if a in present]
            if parts:
                deltas[name] = torch.stack([p.float() for p in parts]).sum(0)
    return deltas


class QloraMethod(LoraMethod):
    """LoRA over an NF4 base: 4-bit load, dequantised merge, bitsandbytes required."""

    traits = METHODS[QloraTraits.name]

    def problems(self, method: MethodSpec, model_config: Any, max_seq_len: int | None) -> list[str]:
        problems = super().problems(method, model_config, max_seq_len)
        if importlib.util.find_spec("bitsandbytes") is None:
            problems.append(
                "method.type 'qlora' needs the bitsandbytes package, which is not installed"
            )
        return problems

    def load_base(
        self,
        name_or_path: str,
        *,
        dtype: torch.dtype,
        device: torch.device,
        attn_implementation: str,
    ) -> PreTrainedModel:
        """NF4 weights, `dtype` compute, placed on `device` as it loads; frozen."""
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path,
            dtype=dtype,
            attn_implementation=attn_implementation,
            quantization_config=build_bnb_config(dtype),
            device_map={"": device},
        )
        prepare_quantized_base(model)
        return model

    def base_notes(self, model: PreTrainedModel) -> list[str]:
        if is_quantized(model):
            return []
        return ["method.type 'qlora' on a base that is not 4-bit: this trains plain LoRA"]

    def merge(self, model: PeftModel) -> PreTrainedModel:
        """Dequantise to the compute dtype (fp32 if unknown), then merge at full precision."""
        compute = getattr(model.config.quantization_config, "bnb_4bit_compute_dtype", None)
        return merge_qlora(model, compute or torch.float32)


QLORA = QloraMethod()
