"""The bottleneck adapter (`method.type` adapter): its peft config, its check, its merge refusal.

`ADAPTER` is the registry's entry; the peft tuner itself (layer, model, registration with
peft) is `bottleneck.py`. The adapter follows the projections of
`kubetune_api.methods.adapter.TARGETS` and must be narrower than the hidden state.
"""

from __future__ import annotations

from typing import Any

from kubetune_api.finetune import MethodSpec
from kubetune_api.methods import METHODS
from kubetune_api.methods.adapter import TARGETS, AdapterTraits
from kubetune_trainer.methods.base import TrainerMethod
from kubetune_trainer.methods.bottleneck import PEFT_TYPE, BottleneckConfig


class AdapterMethod(TrainerMethod):
    """A Houlsby bottleneck after each target, registered with peft as KUBETUNE_BOTTLENECK."""

    traits = METHODS[AdapterTraits.name]
    peft_type = PEFT_TYPE
    merge_refusal = (
        "the bottleneck adapter (method.type 'adapter') cannot be merged into the base "
        "weights: it is nonlinear; serve it with the adapter"
    )

    def build_peft_config(self, method: MethodSpec) -> BottleneckConfig:
        return BottleneckConfig(
            bottleneck_size=method.bottleneck_size,
            adapter_dropout=method.dropout,
            target_modules=list(TARGETS),
            task_type="CAUSAL_LM",
        )

    def problems(self, method: MethodSpec, model_config: Any, max_seq_len: int | None) -> list[str]:
        hidden = model_config.hidden_size
        if method.bottleneck_size >= hidden:
            return [
                f"method.bottleneckSize ({method.bottleneck_size}) must be < the model's hidden size "
                f"({hidden}): the adapter projects the hidden state down to it (Adapter dim mismatch)"
            ]
        return []


ADAPTER = AdapterMethod()
