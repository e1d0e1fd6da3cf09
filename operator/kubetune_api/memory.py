"""Peak GPU memory of a training config, before any weights load: pure arithmetic, no torch.

`estimate_memory` works on the model's config numbers (a `ModelShape`) and a `TrainerConfig`.
Callers: the trainer's `kubetune estimate` CLI (`kubetune_trainer.estimate`, which reads the
model's config.json and prints `MemoryEstimate.table`) and the operator's memory pre-flight,
which warns, or refuses with `strictPreflight`, before a pod is scheduled. What is
method-specific (trainable parameters, weight bytes, the adapter's activations, whether
checkpointing applies) comes from `kubetune_api.methods.METHODS`. Per GPU, in bytes:

- weights: every base parameter in the compute dtype (bf16/fp16: 2 B, fp32: 4 B). QLoRA keeps
  the decoder's linear weights in NF4 with double quantisation, 0.5 B + 1/64 B (8-bit absmax per
  64 weights) + 4/16384 B (fp32 absmax per 256 blocks) per weight; embeddings, the output head
  and norms stay in the compute dtype. ZeRO-3 divides the weights by the GPU count.
- PEFT state: peft keeps adapter weights in fp32 even on a bf16 base, so each trainable
  parameter costs 4 B (weight) + 4 B (gradient) + 8 B (AdamW's two moments) = 16 B; ZeRO-2/3
  divide gradients and moments (ZeRO-3 the weights too) by the GPU count.
- activations: what autograd keeps for backward, per token and per decoder layer, following
  Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
  sec. 4.1) term by term, adapted to a frozen Qwen3 base: a frozen projection keeps nothing
  (its input gradient needs only the weight); no attention dropout and a fused attention kernel,
  so nothing grows with seq^2 (the kernel keeps q, k, v, its output and a fp32 log-sum-exp per
  head); GQA (k and v are num_kv_heads x head_dim wide, or repeated to full width when a padding
  mask forces `repeat_kv`); SwiGLU (gate, SiLU(gate) and up: 3 x intermediate); RMSNorm in fp32
  (a fp32 copy of its input), also on q and k (qk-norm); and LoRA's compute-dtype copy of each
  adapted projection's input (peft casts it to fp32, autocast back) plus a 1-byte dropout mask
  when `method.dropout` > 0. With gradient checkpointing each layer keeps only its input and
  backward recomputes one layer at a time; that layer and the loss chunk are both counted,
  though backward holds them one after the other (conservative by the smaller, ~0.2 GB on
  Qwen3-8B at 2,048 tokens). `layer_activation_bytes` has each term.
- logits: the fused loss projects `training.lossChunkSize` supervised tokens at a time; its
  backward peaks at three fp32 copies of the chunk's logits (saved log-softmax, its incoming
  gradient, the outgoing one): 12 B x chunk x vocab. The full sequence's logits never exist.
- workspace: 0.5 GiB (CUDA context, cuBLAS workspaces) + 5% of the rest for allocator
  fragmentation. Only this term is not measured by `torch.cuda.max_memory_allocated`.

tests/integration/test_estimate_memory.py checks the figures (all but the workspace) against
the live tensor bytes of real training steps on the CPU.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kubetune_api.finetune import MethodSpec
from kubetune_api.methods import traits_of
from kubetune_api.methods.qlora import NF4_BYTES_PER_WEIGHT
from kubetune_api.shapes import QWEN3_SHAPES, ModelShape, UnknownModelError, known_shape
from kubetune_api.trainer_config import TrainerConfig

__all__ = [
    "GIB",
    "NF4_BYTES_PER_WEIGHT",
    "QWEN3_SHAPES",
    "MemoryEstimate",
    "ModelShape",
    "UnknownModelError",
    "activation_bytes",
    "checkpointing_needed",
    "estimate_memory",
    "known_shape",
    "layer_activation_bytes",
    "loss_rows_at_once",
    "parse_size",
    "trainable_params",
    "weight_bytes",
]

GIB = 1024**3
PEFT_BYTES_PER_PARAM = 4 + 4 + 8  # fp32 weight, gradient, AdamW exp_avg + exp_avg_sq
LOGIT_COPIES_FP32 = 3
CUDA_CONTEXT_BYTES = GIB // 2
FRAGMENTATION = 0.05
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
PLAIN_LOGITS_BYTES = 64 * 2**20  # logits this small are not worth chunking and recomputing
AUTO_PRECISION = {"cuda": "bf16", "cpu": "fp32"}  # what `precision: auto` costs per device


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak memory per GPU, by component (bytes)."""

    weights_bytes: int
    peft_params_bytes: int
    peft_grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    logits_bytes: int
    workspace_bytes: int
    trainable_params: int
    tokens_per_micro_batch: int
    world_size: int
    notes: tuple[str, ...] = field(default=())
    checkpointing: bool = False  # whether the estimate keeps only each layer's input

    @property
    def modelled_bytes(self) -> int:
        """Everything but the workspace margin: what tensor allocations add up to."""
        return self.total_bytes - self.workspace_bytes

    @property
    def total_bytes(self) -> int:
        return (
            self.weights_bytes
            + self.peft_params_bytes
            + self.peft_grads_bytes
            + self.optimizer_bytes
            + self.activations_bytes
            + self.logits_bytes
            + self.workspace_bytes
        )

    def fits(self, gpu_memory: int) -> bool:
        """Whether the estimated peak fits one GPU of `gpu_memory` bytes."""
        return self.total_bytes <= gpu_memory

    def rows(self) -> list[tuple[str, int]]:
        return [
            ("weights", self.weights_bytes),
            ("PEFT parameters (fp32)", self.peft_params_bytes),
            ("PEFT gradients (fp32)", self.peft_grads_bytes),
            ("AdamW state (fp32 x2)", self.optimizer_bytes),
            ("activations", self.activations_bytes),
            ("logits (fused loss chunk)", self.logits_bytes),
            ("workspace margin", self.workspace_bytes),
        ]

    def table(self, gpu_memory: int | None = None) -> str:
        lines = [f"{'component':<28}{'GiB':>10}{'GB':>10}"]
        for label, value in [*self.rows(), ("total", self.total_bytes)]:
            lines.append(f"{label:<28}{value / GIB:>10.2f}{value / 1e9:>10.2f}")
        if gpu_memory is not None:
            lines.append(f"{'GPU memory':<28}{gpu_memory / GIB:>10.2f}{gpu_memory / 1e9:>10.2f}")
        return "\n".join(lines)


def trainable_params(shape: ModelShape, method: MethodSpec) -> int:
    """Parameters the method trains (the same count peft reports)."""
    return traits_of(method).trainable_params(shape, method)


def weight_bytes(shape: ModelShape, method: MethodSpec, dtype_bytes: int) -> int:
    """Base model weights: compute dtype, or NF4 linear layers for qlora."""
    return traits_of(method).weight_bytes(shape, dtype_bytes)


def layer_activation_bytes(
    shape: ModelShape, method: MethodSpec, b: int, *, repeat_kv: bool, mask: int = 1
) -> int:
    """Bytes one decoder layer keeps for backward, per token (b: compute dtype bytes).

    A frozen projection keeps nothing but its weight (the input gradient needs only the
    weight), so what stays is what the nonlinear parts and the adapter keep. `mask`: bytes per
    element of a dropout mask (CUDA: 1, a bool; CPU: 4, the dtype of its input).
    """
    h, q, i = shape.hidden_size, shape.q_width, shape.intermediate_size
    kv = shape.kv_width
    kv_attn = q if repeat_kv else kv  # k, v as the attention kernel sees them
    norms = 2 * 4 * h  # input and post-attention RMSNorm: each keeps a fp32 copy of its input
    qk_norm = 4 * q + 4 * kv  # the same for the per-head RMSNorm of q and k
    attention = b * (q + 2 * kv_attn) + b * q + 4 * shape.num_heads  # q, k, v; output; fp32 lse
    mlp = 3 * b * i  # SiLU keeps gate; the product keeps SiLU(gate) and up
    adapter = traits_of(method).activation_bytes(shape, method, b, mask)
    return norms + qk_norm + attention + mlp + adapter


def activation_bytes(
    shape: ModelShape,
    method: MethodSpec,
    b: int,
    tokens: int,
    *,
    checkpointing: bool,
    repeat_kv: bool,
    mask: int = 1,
) -> int:
    """All layers' saved activations for `tokens` tokens, plus the final norm and loss input."""
    layer = layer_activation_bytes(shape, method, b, repeat_kv=repeat_kv, mask=mask)
    head = 4 * shape.hidden_size + b * shape.hidden_size  # final RMSNorm + the loss's rows
    if checkpointing:
        per_token = shape.num_layers * b * shape.hidden_size + layer + head
    else:
        per_token = shape.num_layers * layer + head
    return per_token * tokens


def estimate_memory(
    cfg: TrainerConfig,
    model_config: ModelShape | Mapping[str, Any],
    *,
    world_size: int = 1,
    seq_len: int | None = None,
    device: Literal["cuda", "cpu"] = "cuda",
    memory_limit: int | None = None,
) -> MemoryEstimate:
    """Peak memory per GPU of training `cfg` on `world_size` GPUs (see the module docstring).

    `device="cpu"` models a CPU run instead (dropout masks are as wide as their input there);
    the tests use it to check the formula against CPU training steps. `precision: auto` counts
    2 B on a GPU (bf16 or fp16), 4 B on the CPU; `gradientCheckpointing: auto` is estimated as
    the trainer resolves it (`checkpointing_needed`) against `memory_limit`.
    """
    shape = (
        model_config
        if isinstance(model_config, ModelShape)
        else ModelShape.from_config(model_config)
    )
    ck = cfg.training.gradient_checkpointing
    if ck == "auto":
        ck = checkpointing_needed(cfg, shape, memory_limit, world_size, seq_len, device)
        cfg = cfg.with_values({"training.gradientCheckpointing": ck})
    t, method = cfg.training, cfg.method
    b = DTYPE_BYTES[t.precision if t.precision != "auto" else AUTO_PRECISION[device]]
    seq = seq_len or cfg.dataset.max_input_tokens + cfg.dataset.max_target_tokens
    micro = t.resolved_micro_batch(world_size)
    tokens = (
        (t.max_tokens_per_batch or micro * seq) if t.dynamic_batching == "packing" else micro * seq
    )
    checkpointing = t.gradient_checkpointing is True and traits_of(method).gradient_checkpointing
    padded = t.dynamic_batching != "packing" and micro > 1
    notes = _notes(cfg, checkpointing)
    shard = world_size if t.zero_stage in (2, 3) else 1
    p_shard = world_size if t.zero_stage == 3 else 1
    n_train = trainable_params(shape, method)
    act = activation_bytes(
        shape,
        method,
        b,
        tokens,
        checkpointing=checkpointing,
        repeat_kv=padded,
        mask=1 if device == "cuda" else 4,
    )
    chunk = loss_rows_at_once(tokens, shape.vocab_size, t.loss_chunk_size)
    rest = dict(
        weights_bytes=math.ceil(weight_bytes(shape, method, b) / p_shard),
        peft_params_bytes=math.ceil(4 * n_train / p_shard),
        peft_grads_bytes=math.ceil(4 * n_train / shard),
        optimizer_bytes=math.ceil(8 * n_train / shard),
        activations_bytes=act,
        logits_bytes=LOGIT_COPIES_FP32 * 4 * chunk * shape.vocab_size,
    )
    workspace = CUDA_CONTEXT_BYTES + int(FRAGMENTATION * sum(rest.values()))
    return MemoryEstimate(
        **rest,
        workspace_bytes=workspace,
        trainable_params=n_train,
        tokens_per_micro_batch=tokens,
        world_size=world_size,
        notes=tuple(notes),
        checkpointing=checkpointing,
    )


def loss_rows_at_once(rows: int, vocab: int, chunk_size: int) -> int:
    """Supervised positions the fused loss projects to the vocabulary at once (`loss.py`): all
    `rows`, without recomputation, when their logits' backward (12 B x rows x vocab) is no more
    than a chunk's or PLAIN_LOGITS_BYTES; else `chunk_size` at a time, recomputed in backward."""
    per_row = LOGIT_COPIES_FP32 * 4 * vocab
    if rows * per_row <= max(chunk_size * per_row, PLAIN_LOGITS_BYTES):
        return rows
    return chunk_size


def checkpointing_needed(
    cfg: TrainerConfig,
    shape: ModelShape,
    memory_limit: int | None,
    world_size: int = 1,
    seq_len: int | None = None,
    device: Literal["cuda", "cpu"] = "cuda",
) -> bool:
    """`gradientCheckpointing: auto`: on only when the run does not fit `memory_limit` without it
    (and the method can checkpoint); an unknown limit keeps it on, as an unsized run should."""
    if not traits_of(cfg.method).gradient_checkpointing:
        return False
    if memory_limit is None:
        return True
    off = cfg.with_values({"training.gradientCheckpointing": False})
    est = estimate_memory(off, shape, world_size=world_size, seq_len=seq_len, device=device)
    return not est.fits(memory_limit)


def _notes(cfg: TrainerConfig, checkpointing: bool) -> list[str]:
    notes = []
    if (
        cfg.training.gradient_checkpointing is True
        and not traits_of(cfg.method).gradient_checkpointing
    ):
        notes.append(f"{cfg.method.type} turns gradient checkpointing off; estimated without it")
    if not checkpointing:
        notes.append("without gradient checkpointing every layer keeps its activations")
    return notes


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str) -> int:
    """Bytes of a size: `80GiB` / `80Gi` (binary), `24GB` / `24G` (decimal), or plain bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"--gpu-memory: expected a size such as 80GiB or 24GB, got {text!r}")
    number, unit = float(match.group(1)), (match.group(2) or "").lower().rstrip("b")
    if unit.endswith("i"):
        return int(number * 1024 ** ("kmgt".index(unit[0]) + 1))
    return int(number * _UNITS[unit])
