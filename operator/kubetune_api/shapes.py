"""The shape of a Qwen3-style dense decoder: the numbers memory and parameter counts depend on.

`kubetune_api.memory` and the per-method memory terms (`kubetune_api.methods`) compute from a
`ModelShape`. It comes from a `config.json` mapping (`ModelShape.from_config`; the trainer's
`kubetune estimate` reads the file) or, by name, from the built-in table of Qwen3 dense configs
(`known_shape`: the operator's lookup, which reads no file). Pure and torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class UnknownModelError(ValueError):
    """Neither a local config.json nor an entry of the built-in table describes the model."""


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a Qwen3-style dense decoder that memory depends on."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tie_embeddings: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """From a `config.json` mapping (transformers' field names)."""
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            return cls(
                vocab_size=int(config["vocab_size"]),
                hidden_size=hidden,
                num_layers=int(config["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                intermediate_size=int(config["intermediate_size"]),
                tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            )
        except KeyError as err:
            raise UnknownModelError(f"model config.json lacks {err.args[0]!r}") from None

    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each projection of one decoder layer."""
        h, q, kv, i = self.hidden_size, self.q_width, self.kv_width, self.intermediate_size
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        """Weights of all decoder projections (what QLoRA quantises)."""
        return self.num_layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def other_params(self) -> int:
        """Embeddings, output head (if untied) and norms."""
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)
        norms = self.num_layers * (2 * self.hidden_size + 2 * self.head_dim) + self.hidden_size
        return embed + norms

    @property
    def total_params(self) -> int:
        return self.linear_params + self.other_params


def _qwen3(
    hidden: int, layers: int, heads: int, intermediate: int, tie: bool
) -> ModelShape:  # every Qwen3 dense model: 8 kv heads of 128, vocab 151,936
    return ModelShape(151_936, hidden, layers, heads, 8, 128, intermediate, tie)


QWEN3_SHAPES: dict[str, ModelShape] = {  # from each model's config.json on the hub
    "qwen3-0.6b": _qwen3(1024, 28, 16, 3072, tie=True),
    "qwen3-1.7b": _qwen3(2048, 28, 16, 6144, tie=True),
    "qwen3-4b": _qwen3(2560, 36, 32, 9728, tie=True),
    "qwen3-8b": _qwen3(4096, 36, 32, 12288, tie=False),
    "qwen3-14b": _qwen3(5120, 40, 40, 17408, tie=False),
    "qwen3-32b": _qwen3(5120, 64, 64, 25600, tie=False),
}


def known_shape(name_or_path: str) -> ModelShape:
    """The shape of a known Qwen3 by the last part of its name, never reading a file (the
    operator's lookup: a path in a FineTuneJob means nothing on the operator's disk)."""
    key = name_or_path.rstrip("/").rsplit("/", 1)[-1].lower()
    key = re.sub(r"-(base|instruct|fp8|awq|gptq.*)$", "", key)
    if key in QWEN3_SHAPES:
        return QWEN3_SHAPES[key]
    raise UnknownModelError(
        f"model.name {name_or_path!r}: no config.json there and not a known Qwen3 id "
        f"({', '.join(QWEN3_SHAPES)})"
    )
