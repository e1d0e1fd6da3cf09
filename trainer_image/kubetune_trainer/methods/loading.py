"""Load the base model a method trains: full precision for lora/adapter/prefix, NF4 for qlora.

The training loop and `kubetune export` call `load_base_model`; it checks the method against the
model's `config.json` first, so configuration errors come before the weights load, then lets the
method load the weights (`TrainerMethod.load_base`; qlora's is in `qlora.py`). A local
directory or a hub id both work (the hub token comes from HF_TOKEN). The base comes back
frozen and on `device`.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, PreTrainedModel

from kubetune_api.finetune import MethodSpec
from kubetune_trainer.methods.registry import method_for
from kubetune_trainer.methods.validate import check_method


def load_base_model(
    name_or_path: str,
    method: MethodSpec,
    *,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """The frozen base model for `method`, in `dtype` (qlora: NF4 weights, `dtype` compute)."""
    check_method(method, AutoConfig.from_pretrained(name_or_path))
    return method_for(method).load_base(
        name_or_path,
        dtype=dtype,
        device=_indexed(torch.device(device)),
        attn_implementation=attn_implementation,
    )


def _indexed(device: torch.device) -> torch.device:
    """`cuda` -> `cuda:<current>`: a quantising load places weights by explicit device index."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device
