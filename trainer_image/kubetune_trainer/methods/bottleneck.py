"""Houlsby bottleneck adapters as a peft method, so peft saves, loads and counts them.

Each adapted projection computes `h = base(x); h + up(act(down(dropout(h))))`: a down-projection
to `bottleneck_size`, a nonlinearity, an up-projection initialised to zero (so the model starts
exactly as the base) and a residual. Wrapping `o_proj` and `down_proj`, the last projections of
attention and of the MLP, places one adapter after each sub-layer of every decoder layer, as in
Houlsby et al. (2019), before the decoder's own residual add.

peft's `PeftType` is a closed enum, so `register()` adds our entries to peft's method mappings
under the plain string `KUBETUNE_BOTTLENECK` (the same key `adapter_config.json` stores) rather
than calling `register_peft_method`, which insists on an enum member. Importing
`kubetune_trainer.methods` registers it; afterwards `get_peft_model` and
`PeftModel.from_pretrained(base, dir)` work as for any built-in method. Merging is impossible
(the adapter is nonlinear): `merge` raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from kubetune_api.methods.adapter import TARGETS
from kubetune_trainer.methods.base import MergeNotSupportedError

PEFT_TYPE = "KUBETUNE_BOTTLENECK"
PREFIX = "bottleneck_"
DEFAULT_TARGETS = list(TARGETS)
NONLINEARITIES = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


@dataclass
class BottleneckConfig(PeftConfig):
    """peft config of the bottleneck adapter (what `adapter_config.json` holds)."""

    bottleneck_size: int = field(default=64, metadata={"help": "Width of the bottleneck."})
    non_linearity: str = field(default="silu", metadata={"help": "silu, gelu, relu or tanh."})
    adapter_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter input."})
    target_modules: list[str] | str | None = field(
        default_factory=lambda: list(DEFAULT_TARGETS),
        metadata={"help": "Modules whose output passes through an adapter."},
    )
    exclude_modules: list[str] | str | None = field(default=None)
    modules_to_save: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        if self.bottleneck_size < 1:
            raise ValueError(f"bottleneck_size should be positive, got {self.bottleneck_size}")
        if self.non_linearity not in NONLINEARITIES:
            raise ValueError(
                f"non_linearity should be one of {sorted(NONLINEARITIES)}, got {self.non_linearity!r}"
            )


class BottleneckLayer(nn.Module, BaseTunerLayer):
    """Wraps one projection; adds a zero-initialised residual bottleneck to its output."""

    adapter_layer_names = ("bottleneck_down", "bottleneck_up")
    other_param_names = ("bottleneck_act", "bottleneck_dropout")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: BottleneckConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.bottleneck_down = nn.ModuleDict()
        self.bottleneck_up = nn.ModuleDict()
        self.bottleneck_act = nn.ModuleDict()
        self.bottleneck_dropout = nn.ModuleDict()
        self._disable_adapters = False
        self.merged_adapters = []
        self.out_features = int(cast(nn.Linear, base_layer).out_features)
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: BottleneckConfig) -> None:
        """Add (or replace) the adapter `adapter_name`: up-projection zero, down Kaiming."""
        weight = cast(nn.Linear, self.get_base_layer()).weight
        dtype = weight.dtype if weight.is_floating_point() else torch.float32
        kwargs: dict[str, Any] = {"bias": True, "device": weight.device, "dtype": dtype}
        down = nn.Linear(self.out_features, config.bottleneck_size, **kwargs)
        up = nn.Linear(config.bottleneck_size, self.out_features, **kwargs)
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)
        self.bottleneck_down[adapter_name] = down
        self.bottleneck_up[adapter_name] = up
        self.bottleneck_act[adapter_name] = NONLINEARITIES[config.non_linearity]()
        self.bottleneck_dropout[adapter_name] = nn.Dropout(config.adapter_dropout)
        self.set_adapter(adapter_name, inference_mode=config.inference_mode)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Base output plus, per active adapter, its bottleneck of that output."""
        result: torch.Tensor = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        for name in self.active_adapters:
            if name in self.bottleneck_down:
                result = result + self._bottleneck(name, result)
        return result

    def _bottleneck(self, name: str, h: torch.Tensor) -> torch.Tensor:
        down = cast(nn.Linear, self.bottleneck_down[name])
        up = self.bottleneck_up[name]
        z = self.bottleneck_dropout[name](h.to(down.weight.dtype))
        return up(self.bottleneck_act[name](down(z))).to(h.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Always raises: a nonlinear adapter cannot be folded into a linear weight."""
        raise MergeNotSupportedError(
            "the bottleneck adapter (method.type 'adapter') cannot be merged into the base "
            "weights: it is nonlinear; serve the base model with the adapter loaded instead"
        )

    def unmerge(self) -> None:
        """Nothing to undo: the adapter is never merged."""

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()


class BottleneckModel(BaseTuner):
    """The peft tuner that puts a `BottleneckLayer` around each targeted module."""

    prefix: str = PREFIX
    tuner_layer_cls = BottleneckLayer
    target_module_mapping = {  # noqa: RUF012 (BaseTuner declares it an instance attribute)
        t: list(DEFAULT_TARGETS) for t in ("qwen3", "qwen2", "llama", "mistral")
    }

    def _create_and_replace(  # type: ignore[override]
        self,
        peft_config: BottleneckConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **_: Any,
    ) -> None:
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, peft_config)
            return
        if not isinstance(getattr(target, "out_features", None), int):
            raise ValueError(
                f"bottleneck target {current_key!r} has no out_features (not a Linear)"
            )
        new_module = BottleneckLayer(target, adapter_name, peft_config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)


def register() -> None:
    """Make peft know `KUBETUNE_BOTTLENECK` (idempotent); see the module docstring for why."""
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )

    mappings: list[tuple[dict[Any, Any], Any]] = [
        (PEFT_TYPE_TO_CONFIG_MAPPING, BottleneckConfig),
        (PEFT_TYPE_TO_TUNER_MAPPING, BottleneckModel),
        (PEFT_TYPE_TO_PREFIX_MAPPING, PREFIX),
    ]
    for mapping, value in mappings:
        mapping.setdefault(PEFT_TYPE, value)
