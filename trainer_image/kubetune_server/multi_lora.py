"""Many LoRA adapters on one INT8 base, unmerged: load, unload, and route rows of a batch.

`loading.py` builds a `LoraSet` over the quantized base when the server serves named adapters
(`--adapter NAME=DIR`, the admin endpoint, the adapter config file); `engine.py` wraps every
forward pass in `routing(names)`, one peft adapter name per row (`"__base__"` for the base), so
one batch mixes adapters (peft's mixed-batch inference, `adapter_names`). The base's linear
layers are already `Int8Linear`; peft wraps them as custom modules (the LoRA A/B matrices stay
fp32 beside the int8 weight), so nothing is merged and adapters stay swappable.

Only plain LoRA is served this way: DoRA, prefix-tuning and bottleneck adapters cannot share a
batch, and `load` refuses them with the reason (the single merged `--adapter DIR` still serves
them). All adapters share the base's tokenizer and chat template. Not thread-safe: the caller
(`adapter_registry`) runs `load`/`unload` on the generation thread, between batches.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from torch import nn

from kubetune_server.quantize import Int8Linear

BASE = "__base__"  # peft's name for "no adapter" in adapter_names


class AdapterLoadError(ValueError):
    """An adapter folder that cannot be served; the message says why."""


def _lora_config(path: Path) -> Any:
    from peft import LoraConfig, PeftConfig
    from peft.tuners import lora

    if not (path / "adapter_config.json").is_file():
        raise AdapterLoadError(f"{path} has no adapter_config.json (not a PEFT adapter folder)")
    try:
        config = PeftConfig.from_pretrained(str(path))
    except Exception as err:
        raise AdapterLoadError(f"{path}/adapter_config.json cannot be read: {err}") from err
    if not isinstance(config, LoraConfig):
        raise AdapterLoadError(
            f"{path} is a {config.peft_type} adapter; only LoRA adapters can be served by name "
            "(serve it alone with --adapter DIR, merged or attached)"
        )
    if config.use_dora:
        raise AdapterLoadError(f"{path} is a DoRA adapter; peft cannot mix DoRA rows in a batch")
    config.inference_mode = True
    config._register_custom_module({Int8Linear: lora.Linear})
    return config


def _weights(path: Path) -> dict[str, Any]:
    from peft.utils import load_peft_weights

    try:
        return dict(load_peft_weights(str(path), device="cpu"))
    except Exception as err:
        raise AdapterLoadError(f"{path}: adapter weights cannot be read: {err}") from err


class LoraSet:
    """The base model (a transformers causal LM) and the LoRA adapters loaded onto it."""

    def __init__(self, base: nn.Module) -> None:
        self.base = base
        self._peft: Any = None  # the PeftModel, created with the first adapter

    @property
    def names(self) -> list[str]:
        """peft names of the loaded adapters."""
        return [] if self._peft is None else [n for n in self._peft.peft_config]

    def load(self, name: str, path: Path) -> None:
        """Load the LoRA adapter in `path` as `name`; raises AdapterLoadError saying why not."""
        if name in self.names:
            raise AdapterLoadError(f"an adapter named {name!r} is already loaded")
        config, weights = _lora_config(path), _weights(path)
        try:
            self._inject(name, config)
            self._set_weights(name, weights, path)
        except Exception as err:
            self._forget(name)
            if isinstance(err, AdapterLoadError):
                raise
            raise AdapterLoadError(f"{path} does not fit this base model: {err}") from err
        self._peft.eval()

    def unload(self, name: str) -> None:
        """Remove adapter `name` (its layers and weights); unknown names are a KeyError."""
        if name not in self.names:
            raise KeyError(name)
        self._forget(name)

    def routing(self, adapters: Sequence[str]) -> Any:
        """Context for one forward pass: row i goes through adapter `adapters[i]` (or BASE)."""
        if self._peft is None or not self.names:
            return nullcontext()
        return self._peft.base_model._enable_peft_forward_hooks(adapter_names=list(adapters))

    def _inject(self, name: str, config: Any) -> None:
        from peft import PeftModel

        with warnings.catch_warnings():  # peft warns about any custom module it wraps
            warnings.filterwarnings("ignore", message="Unsupported layer type")
            if self._peft is None:
                self._peft = PeftModel(self.base, config, adapter_name=name)
            else:
                self._peft.add_adapter(name, config)

    def _set_weights(self, name: str, weights: dict[str, Any], path: Path) -> None:
        from peft import set_peft_model_state_dict

        result: Any = set_peft_model_state_dict(self._peft, weights, adapter_name=name)
        if result.unexpected_keys:
            first = ", ".join(sorted(result.unexpected_keys)[:3])
            raise AdapterLoadError(f"{path} holds weights this base has no place for: {first}")
        missing = [k for k in result.missing_keys if f".{name}." in k]
        if missing:
            raise AdapterLoadError(f"{path} lacks weights for {', '.join(sorted(missing)[:3])}")

    def _forget(self, name: str) -> None:
        if self._peft is not None and name in self._peft.peft_config:
            self._peft.delete_adapter(name)
