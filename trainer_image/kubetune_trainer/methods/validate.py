"""Check a `spec.method` against a model's config before any weights load; report every problem.

The training loop calls `validate_method` right after reading the model's `config.json`, so a
bad rank or a misspelt module name fails in a second with all reasons listed, not after minutes
of loading. `check_method` raises instead; `apply_method` and `load_base_model` call it. The
model type is checked here; each method's own checks are its `TrainerMethod.problems` (in
`lora.py`, `qlora.py`, `adapter.py`, `prefix.py`), found through the registry.
"""

from __future__ import annotations

from typing import Any

from kubetune_api.finetune import MethodSpec
from kubetune_trainer.methods.base import MethodConfigError
from kubetune_trainer.methods.registry import method_for

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2", "llama", "mistral")
"""Dense decoders that share Qwen3's module names (the bottleneck adapter relies on them)."""


def validate_method(
    method: MethodSpec, model_config: Any, *, max_seq_len: int | None = None
) -> list[str]:
    """Every reason `method` cannot train `model_config` (a transformers PretrainedConfig).

    `max_seq_len`, when known (maxInputTokens + maxTargetTokens), lets prefix-tuning check that
    prefix plus sequence fit the model's positions. An empty list means the method is usable.
    """
    model_type = getattr(model_config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return [
            f"model type {model_type!r} is not supported by the PEFT methods "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        ]
    return method_for(method).problems(method, model_config, max_seq_len)


def check_method(method: MethodSpec, model_config: Any, *, max_seq_len: int | None = None) -> None:
    """Raise `MethodConfigError` listing all problems `validate_method` finds."""
    problems = validate_method(method, model_config, max_seq_len=max_seq_len)
    if problems:
        raise MethodConfigError(problems)
