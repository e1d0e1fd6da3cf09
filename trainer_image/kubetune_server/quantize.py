"""INT8 weights for serving: our own int8 modules on CPU, bitsandbytes LLM.int8 on CUDA.

`loading.py` calls `quantize_model` once, after the adapter is merged. On CPU every `nn.Linear`
(lm_head included) becomes an `Int8Linear` and the token embedding an `Int8Embedding`; a tied
lm_head shares the embedding's int8 matrix, so the whole model shrinks to about 0.26x of fp32.

Why not `torch.ao.quantization.quantize_dynamic`: it is deprecated in torch 2.x (its warning
points to torchao, which is not one of our dependencies), and it quantizes activations with one
scale per *tensor*, so a request's output would depend on the other requests (and the padding) in
its batch. `Int8Linear` is the scheme of torchao's `Int8DynamicActivationInt8WeightConfig`:
symmetric int8 weights with one scale per output channel, activations quantized per token
(per row) at run time, an int8 x int8 -> int32 matmul (`torch._int_mm`, the kernel torchao
itself calls on CPU), then rescaled. Integer accumulation is exact, and each row has its own scale,
so a row's result never depends on its batch mates.

bitsandbytes 8-bit (CUDA only) keeps lm_head and the embedding in bf16, as transformers does.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

INT8_MAX = 127.0


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: (int8 matrix, fp32 scale per row) with weight ~= q * scale."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / INT8_MAX).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.contiguous(), scale


class Int8Linear(nn.Module):
    """y = x W^T + b with int8 W (per output channel) and int8 x (per row), int32 accumulation."""

    qweight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features = int(qweight.shape[1])
        self.out_features = int(qweight.shape[0])
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Quantize an existing linear layer."""
        qweight, scale = quantize_rows(linear.weight)
        return cls(qweight, scale, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float()
        x_scale = (rows.abs().amax(dim=1, keepdim=True) / INT8_MAX).clamp(min=1e-12)
        xq = torch.round(rows / x_scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        acc = torch._int_mm(xq, self.qweight.t())
        out = acc.float() * x_scale * self.scale
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8Embedding(nn.Module):
    """Token embedding stored as int8 rows with one scale each; lookups dequantize."""

    qweight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.num_embeddings, self.embedding_dim = (int(n) for n in qweight.shape)
        self.dtype = dtype
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.qweight).float() * self.scale[ids].unsqueeze(-1)
        return rows.to(self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8"


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers, each storage counted once (tied weights once)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += tensor.untyped_storage().nbytes()
    return total


def quantize_cpu_int8(model: nn.Module) -> nn.Module:
    """Replace embeddings and every linear layer by int8 ones, in place; returns `model`."""
    get_in = getattr(model, "get_input_embeddings", None)
    embedding = get_in() if callable(get_in) else None
    shared: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if isinstance(embedding, nn.Embedding):
        q, s = quantize_rows(embedding.weight)
        shared[embedding.weight.data_ptr()] = (q, s)
        _replace(model, embedding, Int8Embedding(q, s, embedding.weight.dtype))
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            tied = shared.get(module.weight.data_ptr())
            new = Int8Linear(*tied, module.bias) if tied else Int8Linear.from_linear(module)
            _set_child(model, name, new)
    return model


def quantize_cuda_bnb_int8(model: nn.Module, *, threshold: float = 6.0) -> nn.Module:
    """bitsandbytes LLM.int8 for every linear layer but lm_head; moves the model to CUDA."""
    import bitsandbytes as bnb

    get_out = getattr(model, "get_output_embeddings", None)
    skip = get_out() if callable(get_out) else None
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or module is skip:
            continue
        new = bnb.nn.Linear8bitLt(
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            has_fp16_weights=False,
            threshold=threshold,
        )
        new.weight = bnb.nn.Int8Params(
            module.weight.data.cpu(), requires_grad=False, has_fp16_weights=False
        )
        if module.bias is not None:
            new.bias = nn.Parameter(module.bias.data, requires_grad=False)
        _set_child(model, name, new)
    return model.to("cuda")  # Int8Params quantize on their way to the GPU


def quantize_model(model: nn.Module, device: torch.device) -> nn.Module:
    """INT8 for `device`: int8 modules on CPU, bitsandbytes on CUDA."""
    if device.type == "cuda":
        return quantize_cuda_bnb_int8(model)
    if device.type != "cpu":
        raise ValueError(f"int8 quantization needs a cpu or cuda device, got {device}")
    return quantize_cpu_int8(model)


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for name, module in root.named_modules():
        if module is old:
            _set_child(root, name, new)
            return


def _set_child(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
