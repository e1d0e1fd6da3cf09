"""Weight-only int8/int4 checkpoints for CPU serving: the format, the quantiser and the loader.

`kubetune export --quantize` writes one with `save_quantized`; `kubetune serve` (or anyone)
reads it back with `load_quantized(dir)`, which returns a transformers model whose projections
are `QuantizedLinear` modules that dequantise their weight on the fly in each forward.

The format, version 1 (a directory):
- `config.json`, `generation_config.json` and the tokenizer files, as transformers writes them;
- `model.safetensors`: the state dict of the model with every quantised Linear `X` holding
  `X.qweight`, `X.scales` (and for int4 `X.mins`) instead of `X.weight` (`X.bias` unchanged if
  present), and the output head left out when it is tied to the embeddings;
  - int8, symmetric per output channel: `qweight` int8 [out, in] in -127..127, `scales` float16
    [out] = the row's largest |weight| / 127; weight = qweight x scale;
  - int4, affine per group of `group_size` consecutive inputs: `qweight` uint8 [out, in / 2],
    two values 0..15 per byte, the even column in the low nibble; `scales` and `mins` float16
    [out, in / group_size]; weight = value x scale + min. Each group's range is its [min, max]
    shrunk by the factor in `CLIP_RATIOS` that reconstructs the group best (least squares);
  - scales and mins are rounded to float16 before the values are computed from them;
- `kubetune_quantization.json`: `{"format": "kubetune-weight-only", "version": 1, "bits": 8 | 4,
  "group_size": null | G, "scheme": "symmetric-per-channel" | "affine-per-group",
  "scale_dtype": "float16", "dtype": <dtype of the other tensors>, "modules": [names of the
  quantised Linears]}`.

Quantised: every nn.Linear of the decoder layers (attention and MLP projections). Kept as they
are: embeddings, norms and the output head (tied to the embeddings in small Qwen3 models; its
error would reach every logit).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT = "kubetune-weight-only"
VERSION = 1
META_FILE = "kubetune_quantization.json"
WEIGHTS_FILE = "model.safetensors"
BITS = (8, 4)
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)  # int4: shrunk ranges tried per group
SCALE_DTYPE = torch.float16
MIN_SCALE = 1e-8


def quantize_weight(
    weight: torch.Tensor, bits: int, group_size: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(qweight, scales, mins) of a [out, in] weight (mins: None for int8); layout above."""
    w = weight.detach().float()
    if bits == 8:
        amax = w.abs().amax(dim=1)
        scales = (amax / 127).clamp(min=MIN_SCALE).to(SCALE_DTYPE)
        values = torch.round(w / scales.float()[:, None]).clamp(-127, 127)
        return values.to(torch.int8), scales, None
    groups = w.view(w.shape[0], -1, _group(group_size))
    scales, mins = _best_int4_range(groups)
    values = torch.round((groups - mins.float()) / scales.float()).clamp(0, 15).view(w.shape)
    nibbles = values.to(torch.uint8)
    packed = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
    return packed, scales.squeeze(-1), mins.squeeze(-1)


def _best_int4_range(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group, the (scale, min) among the shrunk ranges that reconstructs it best (MSE)."""
    lo, hi = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
    best_err = torch.full_like(lo, float("inf"))
    best_scale, best_min = torch.ones_like(lo), torch.zeros_like(lo)
    for ratio in CLIP_RATIOS:
        scale = ((hi - lo) * ratio / 15).clamp(min=MIN_SCALE).to(SCALE_DTYPE).float()
        low = (lo * ratio).to(SCALE_DTYPE).float()
        recon = torch.round((groups - low) / scale).clamp(0, 15) * scale + low
        err = (recon - groups).pow(2).sum(dim=-1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_min = torch.where(better, low, best_min)
    return best_scale.to(SCALE_DTYPE), best_min.to(SCALE_DTYPE)


def dequantize_weight(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    mins: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The [out, in] weight in `dtype` from its quantised form (int8 when `mins` is None)."""
    if mins is None:
        return (qweight.float() * scales.float()[:, None]).to(dtype)
    values = torch.stack((qweight & 0x0F, qweight >> 4), dim=-1).view(qweight.shape[0], -1)
    grouped = values.float().view(scales.shape[0], scales.shape[1], -1)
    weight = grouped * scales.float()[..., None] + mins.float()[..., None]
    return weight.view(values.shape).to(dtype)


def _group(group_size: int | None) -> int:
    if group_size is None:
        raise ValueError("int4 needs a group size")
    return group_size


class QuantizedLinear(nn.Module):
    """A Linear whose weight is stored quantised and dequantised in each forward."""

    qweight: torch.Tensor
    scales: torch.Tensor
    mins: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bits: int,
        group_size: int | None,
        bias: bool,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        packed = in_features if bits == 8 else in_features // 2
        qdtype = torch.int8 if bits == 8 else torch.uint8
        scale_shape = (
            (out_features,) if bits == 8 else (out_features, in_features // _group(group_size))
        )
        self.register_buffer(
            "qweight", torch.zeros(out_features, packed, dtype=qdtype, device=device)
        )
        self.register_buffer("scales", torch.ones(scale_shape, dtype=SCALE_DTYPE, device=device))
        mins = torch.zeros(scale_shape, dtype=SCALE_DTYPE, device=device) if bits == 4 else None
        self.register_buffer("mins", mins)  # None for int8: not in the state dict
        self.bias = (
            nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False)
            if bias
            else None
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int | None) -> QuantizedLinear:
        module = cls(
            linear.in_features,
            linear.out_features,
            bits=bits,
            group_size=group_size,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        qweight, scales, mins = quantize_weight(linear.weight, bits, group_size)
        module.qweight.copy_(qweight)
        module.scales.copy_(scales)
        if mins is not None and module.mins is not None:
            module.mins.copy_(mins)
        if linear.bias is not None and module.bias is not None:
            module.bias.data.copy_(linear.bias.detach())
        return module

    def weight_for(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_weight(self.qweight, self.scales, self.mins, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight_for(x.dtype), bias)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{group}"


def quantizable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The decoder layers' nn.Linear modules, by name (the output head is not one of them)."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and ".layers." in f".{name}"
    }


def check_group_size(linears: dict[str, nn.Linear], bits: int, group_size: int | None) -> None:
    """Raise ValueError naming the first projection the int4 group size does not fit."""
    if bits == 8:
        return
    if group_size is None or group_size < 2 or group_size % 2:
        raise ValueError(f"--group-size must be an even number >= 2 for int4, got {group_size}")
    for name, linear in linears.items():
        if linear.in_features % group_size:
            raise ValueError(
                f"--group-size {group_size} does not divide in_features {linear.in_features} "
                f"of {name}"
            )


def quantize_model(model: nn.Module, bits: int, group_size: int | None) -> list[str]:
    """Swap the decoder's Linears for QuantizedLinear in place; return their names."""
    if bits not in BITS:
        raise ValueError(f"bits must be 8 or 4, got {bits}")
    linears = quantizable_linears(model)
    check_group_size(linears, bits, group_size)
    for name, linear in linears.items():
        parent, _, child = name.rpartition(".")
        setattr(
            model.get_submodule(parent),
            child,
            QuantizedLinear.from_linear(linear, bits, group_size),
        )
    return list(linears)


def save_quantized(
    model: Any, out_dir: Path, *, bits: int, group_size: int | None, modules: list[str]
) -> Path:
    """Write a quantised model (after `quantize_model`) in the format above; return the weights file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    weights = out_dir / WEIGHTS_FILE
    save_file(state, str(weights), metadata={"format": "pt", "kubetune": FORMAT})
    model.config.save_pretrained(str(out_dir))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(out_dir))
    dtype = str(next(iter(model.parameters())).dtype).removeprefix("torch.")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "bits": bits,
        "group_size": group_size if bits == 4 else None,
        "scheme": "symmetric-per-channel" if bits == 8 else "affine-per-group",
        "scale_dtype": "float16",
        "dtype": dtype,
        "modules": modules,
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return weights


def is_quantized_dir(path: str | Path) -> bool:
    """True when `path` holds a checkpoint in this format."""
    return (Path(path) / META_FILE).is_file()


def read_meta(path: str | Path) -> dict[str, Any]:
    """The quantisation metadata; raises ValueError for another format or a newer version."""
    meta: dict[str, Any] = json.loads((Path(path) / META_FILE).read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(
            f"{path}/{META_FILE}: expected format {FORMAT!r} version {VERSION}, "
            f"got {meta.get('format')!r} version {meta.get('version')!r}"
        )
    if meta.get("bits") not in BITS:
        raise ValueError(f"{path}/{META_FILE}: bits must be 8 or 4, got {meta.get('bits')!r}")
    return meta


def load_quantized(path: str | Path, *, device: torch.device | str = "cpu") -> Any:
    """A model (eval mode) from a quantised checkpoint; its projections dequantise on the fly."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    meta = read_meta(path)
    config = AutoConfig.from_pretrained(str(path))
    dtype = getattr(torch, meta["dtype"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    for name in meta["modules"]:
        linear = model.get_submodule(name)
        parent, _, child = name.rpartition(".")
        module = QuantizedLinear(
            linear.in_features,
            linear.out_features,
            bits=meta["bits"],
            group_size=meta["group_size"],
            bias=linear.bias is not None,
            device="meta",
            dtype=dtype,
        )
        setattr(model.get_submodule(parent), child, module)
    state = load_file(str(path / WEIGHTS_FILE), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"{path}/{WEIGHTS_FILE} does not match the model: missing {sorted(set(missing) - tied)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    if tied:
        model.tie_weights()
    _rebuild_meta_buffers(model, config, torch.device(device))
    return model.eval()


def _rebuild_meta_buffers(model: nn.Module, config: Any, device: torch.device) -> None:
    """Non-persistent buffers (rotary inv_freq) are not in the file: build their modules anew."""
    for name, module in list(model.named_modules()):
        if not any(b.is_meta for b in module.buffers(recurse=False)):
            continue
        if not name.endswith("rotary_emb"):
            raise ValueError(
                f"cannot rebuild {name} ({type(module).__name__}): it has buffers on meta"
            )
        parent, _, child = name.rpartition(".")
        with device:
            rebuilt = type(module)(config=config)
        setattr(model.get_submodule(parent), child, rebuilt)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"tensors left unloaded: {left[:5]}")
