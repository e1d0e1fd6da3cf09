"""LoRA (and QLoRA's adapter half): the peft `LoraConfig`, and its checks against the model.

`LORA` is the registry's entry for `method.type` lora; `qlora.py` extends it with the 4-bit
base (peft picks the 4-bit LoRA layer by itself). Messages use the spec's camelCase field
names: "method.rank (8192) must be <= ...".
"""

from __future__ import annotations

from typing import Any

from peft import LoraConfig, TaskType

from kubetune_api.finetune import MethodSpec
from kubetune_api.methods import METHODS
from kubetune_api.methods.lora import LoraTraits
from kubetune_trainer.methods.base import TrainerMethod

ALL_LINEAR = "all-linear"
"""peft's shorthand for every linear layer except the output head; allowed as the only entry."""

DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EXTRA_TARGETS = ("lm_head", "embed_tokens")
"""Also accepted for LoRA: the output head and the input embedding (peft wraps both)."""


class LoraMethod(TrainerMethod):
    """LoRA on `targetModules` of a base in the compute dtype."""

    traits = METHODS[LoraTraits.name]
    peft_type = "LORA"

    def build_peft_config(self, method: MethodSpec) -> LoraConfig:
        return build_lora_config(method)

    def problems(self, method: MethodSpec, model_config: Any, max_seq_len: int | None) -> list[str]:
        problems = _target_problems(method.target_modules, model_config.model_type)
        hidden = model_config.hidden_size
        if method.rank > hidden:
            problems.append(
                f"method.rank ({method.rank}) must be <= the model's hidden size ({hidden})"
            )
        else:
            problems += _rank_vs_modules(method, module_shapes(model_config))
        return problems


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


LORA = LoraMethod()
