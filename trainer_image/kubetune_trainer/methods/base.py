"""Shared types of the PEFT methods package: its errors, the applied-method summary, and
`TrainerMethod`, the torch half of one method.

Each of `lora`, `qlora`, `adapter` and `prefix` defines a `TrainerMethod` subclass and one
instance; `registry.py` collects them by `method.type`, and `validate`, `loading`, `apply` and
`persist` ask the registry instead of comparing `method.type`. The defaults here are what most
methods do (load the base in the compute dtype, let peft save and merge). The training loop
reads `MethodInfo` for its log line and run summary, and catches `MethodConfigError` to report a
configuration problem (a permanent failure: retrying will not help).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from peft import PeftConfig, PeftModel
from transformers import AutoModelForCausalLM, PreTrainedModel

from kubetune_api.finetune import MethodSpec
from kubetune_api.methods import MethodTraits


class MethodConfigError(ValueError):
    """A `spec.method` that cannot work with the chosen model; `problems` lists every reason."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class MergeNotSupportedError(ValueError):
    """The adapter cannot be folded into the base weights (bottleneck adapter, prefix-tuning)."""


@dataclass(frozen=True)
class MethodInfo:
    """What `apply_method` did: parameter counts, whether checkpointing is on, and notes."""

    method: str
    trainable_params: int
    total_params: int
    gradient_checkpointing: bool
    notes: list[str] = field(default_factory=list)

    @property
    def trainable_fraction(self) -> float:
        """Trainable parameters over all parameters (4-bit weights counted unpacked)."""
        return self.trainable_params / self.total_params if self.total_params else 0.0


class TrainerMethod:
    """One method's torch side: peft config, checks against the model, load, save, merge."""

    traits: ClassVar[MethodTraits]
    """The method's torch-free traits (`kubetune_api.methods.METHODS`)."""
    peft_type: ClassVar[str]
    """The `peft_type` its `adapter_config.json` stores."""
    merge_refusal: ClassVar[str] = ""
    """Why the adapter cannot be merged; empty when it can (`traits.mergeable`)."""

    def build_peft_config(self, method: MethodSpec) -> PeftConfig:
        """The peft config of `method`."""
        raise NotImplementedError

    def problems(self, method: MethodSpec, model_config: Any, max_seq_len: int | None) -> list[str]:
        """Every reason `method` cannot train `model_config` (a transformers PretrainedConfig)."""
        return []

    def owns(self, config: PeftConfig) -> bool:
        """Whether a loaded adapter's peft config is of this method's peft type."""
        return str(getattr(config.peft_type, "value", config.peft_type)) == self.peft_type

    def load_base(
        self,
        name_or_path: str,
        *,
        dtype: torch.dtype,
        device: torch.device,
        attn_implementation: str,
    ) -> PreTrainedModel:
        """The frozen base in `dtype` on `device`."""
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype, attn_implementation=attn_implementation
        )
        model.requires_grad_(False)
        return model.to(device)  # type: ignore[arg-type]  # transformers wraps `to`; mypy misreads it

    def base_notes(self, model: PreTrainedModel) -> list[str]:
        """Warnings about the base `apply_method` got (none by default)."""
        return []

    def save(
        self, model: PeftModel, out_dir: Path, state_dict: dict[str, torch.Tensor] | None
    ) -> None:
        """Write the adapter (weights from `state_dict` when given) to `out_dir`."""
        model.save_pretrained(str(out_dir), state_dict=state_dict)

    def merge(self, model: PeftModel) -> PreTrainedModel:
        """The base with the adapter folded in; raises `MergeNotSupportedError` if it cannot be."""
        if self.merge_refusal:
            raise MergeNotSupportedError(self.merge_refusal)
        merged: PreTrainedModel = model.merge_and_unload()
        return merged
