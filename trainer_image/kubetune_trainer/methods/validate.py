"""Check a `spec.method` against a model's config before any weights load; report every problem.

The training loop calls `validate_method` right after reading the model's `config.json`, so a
bad rank or a misspelt module name fails in a second with all reasons listed, not after minutes
of loading. `check_method` raises instead; `apply_method` and `load_base_model` call it.
Messages use the spec's camelCase field names: "method.rank (8192) must be <= ...".
"""

from __future__ import annotations

import importlib.util
from typing import Any

from kubetune_api.finetune import MethodSpec
from kubetune_trainer.methods.base import MethodConfigError

ALL_LINEAR = "all-linear"
"""peft's shorthand for every linear layer except the output head; allowed as the only entry."""

DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EXTRA_TARGETS = ("lm_head", "embed_tokens")
"""Also accepted for LoRA: the output head and the input embedding (peft wraps both)."""

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2", "llama", "mistral")
"""Dense decoders that share Qwen3's module names (the bottleneck adapter relies on them)."""

BOTTLENECK_TARGETS = ("o_proj", "down_proj")
"""The bottleneck adapter follows the last projection of attention and of the MLP."""


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
    if method.type in ("lora", "qlora"):
        return _lora_problems(method, model_config)
    if method.type == "adapter":
        return _bottleneck_problems(method, model_config)
    return _prefix_problems(method, model_config, max_seq_len)


def check_method(method: MethodSpec, model_config: Any, *, max_seq_len: int | None = None) -> None:
    """Raise `MethodConfigError` listing all problems `validate_method` finds."""
    problems = validate_method(method, model_config, max_seq_len=max_seq_len)
    if problems:
        raise MethodConfigError(problems)


def method_notes(method: MethodSpec) -> list[str]:
    """Harmless oddities worth a log line: fields set that the chosen method ignores."""
    ignored = {
        "lora": ("num_virtual_tokens", "bottleneck_size"),
        "qlora": ("num_virtual_tokens", "bottleneck_size"),
        "adapter": ("rank", "alpha", "target_modules", "num_virtual_tokens"),
        "prefix-tuning": ("rank", "alpha", "dropout", "target_modules", "bottleneck_size"),
    }[method.type]
    fields = MethodSpec.model_fields
    return [
        f"method.{fields[name].alias or name} is ignored by method.type {method.type!r}"
        for name in ignored
        if name in method.model_fields_set
    ]


def module_shapes(model_config: Any) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each targetable module of a Qwen3-style decoder."""
    hidden = model_config.hidden_size
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or hidden // heads
    inter = model_config.intermediate_size
    vocab = model_config.vocab_size
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
        "lm_head": (hidden, vocab),
        "embed_tokens": (vocab, hidden),
    }


def _lora_problems(method: MethodSpec, model_config: Any) -> list[str]:
    problems = _target_problems(method.target_modules, model_config.model_type)
    hidden = model_config.hidden_size
    if method.rank > hidden:
        problems.append(
            f"method.rank ({method.rank}) must be <= the model's hidden size ({hidden})"
        )
    else:
        problems += _rank_vs_modules(method, module_shapes(model_config))
    if method.type == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        problems.append(
            "method.type 'qlora' needs the bitsandbytes package, which is not installed"
        )
    return problems


def _target_problems(targets: list[str], model_type: str) -> list[str]:
    if ALL_LINEAR in targets:
        if len(targets) == 1:
            return []
        return [f"method.targetModules: {ALL_LINEAR!r} must be the only entry, got {targets}"]
    known = DECODER_LINEARS + EXTRA_TARGETS
    return [
        f"method.targetModules contains {name!r}, which is not a module of {model_type} "
        f"(known: {', '.join(known)})"
        for name in targets
        if name.rsplit(".", 1)[-1] not in known
    ]


def _rank_vs_modules(method: MethodSpec, shapes: dict[str, tuple[int, int]]) -> list[str]:
    names = DECODER_LINEARS if method.target_modules == [ALL_LINEAR] else method.target_modules
    problems = []
    for name in dict.fromkeys(n.rsplit(".", 1)[-1] for n in names):
        if name in shapes and method.rank > min(shapes[name]):
            problems.append(
                f"method.rank ({method.rank}) must be <= the smallest dimension of {name} "
                f"({min(shapes[name])})"
            )
    return problems


def _bottleneck_problems(method: MethodSpec, model_config: Any) -> list[str]:
    hidden = model_config.hidden_size
    if method.bottleneck_size >= hidden:
        return [
            f"method.bottleneckSize ({method.bottleneck_size}) must be < the model's hidden size "
            f"({hidden}): the adapter projects the hidden state down to it (Adapter dim mismatch)"
        ]
    return []


def _prefix_problems(method: MethodSpec, model_config: Any, max_seq_len: int | None) -> list[str]:
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
