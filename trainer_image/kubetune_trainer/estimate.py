"""`kubetune estimate`: predict peak GPU memory of a training config before any weights load.

    kubetune estimate --config cfg.yaml --gpu-memory 80GiB [--gpus N] [--seq-len L]

Prints a breakdown and exits 0 when the total fits the GPU, 1 when it does not (2: bad config).
`estimate_memory` is pure arithmetic on the model's config numbers (no torch import), so the
operator calls it to warn, or refuse with `strictPreflight`, before a pod is scheduled.

The model comes from `config.json` in a local model directory, or from the built-in table of
Qwen3 dense configs (0.6B, 1.7B, 4B, 8B, 14B, 32B) for hub ids. Per GPU, in bytes:

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

import argparse
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kubetune_api import ConfigError, TrainerConfig, load_trainer_config
from kubetune_api.finetune import MethodSpec

GIB = 1024**3
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
PEFT_BYTES_PER_PARAM = 4 + 4 + 8  # fp32 weight, gradient, AdamW exp_avg + exp_avg_sq
LOGIT_COPIES_FP32 = 3
CUDA_CONTEXT_BYTES = GIB // 2
FRAGMENTATION = 0.05
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BOTTLENECK_MODULES = ("o_proj", "down_proj")


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


def model_shape(name_or_path: str) -> ModelShape:
    """The shape of a local model directory (its config.json) or of a known Qwen3 hub id."""
    config = Path(name_or_path) / "config.json"
    if config.is_file():
        return ModelShape.from_config(json.loads(config.read_text(encoding="utf-8")))
    return known_shape(name_or_path)


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
    if method.type in ("lora", "qlora"):
        shapes = shape.linear_shapes()
        per_layer = sum(
            method.rank * (a + b)
            for name, (a, b) in shapes.items()
            if name in method.target_modules
        )
        return shape.num_layers * per_layer
    if method.type == "adapter":
        h, bn = shape.hidden_size, method.bottleneck_size
        return shape.num_layers * len(BOTTLENECK_MODULES) * (2 * h * bn + h + bn)
    return method.num_virtual_tokens * shape.num_layers * 2 * shape.kv_width  # prefix-tuning


def weight_bytes(shape: ModelShape, method: MethodSpec, dtype_bytes: int) -> int:
    """Base model weights: compute dtype, or NF4 linear layers for qlora."""
    if method.type == "qlora":
        return int(shape.linear_params * NF4_BYTES_PER_WEIGHT + shape.other_params * dtype_bytes)
    return shape.total_params * dtype_bytes


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
    return norms + qk_norm + attention + mlp + _method_activation_bytes(shape, method, b, mask)


LORA_INPUTS = {  # adapted projections that share one input tensor
    "q_proj": "attn_in",
    "k_proj": "attn_in",
    "v_proj": "attn_in",
    "o_proj": "attn_out",
    "gate_proj": "mlp_in",
    "up_proj": "mlp_in",
    "down_proj": "mlp_act",
}


def _method_activation_bytes(shape: ModelShape, method: MethodSpec, b: int, mask: int) -> int:
    """What the adapter keeps per token per layer (b: compute dtype bytes, mask: dropout mask).

    peft casts each adapted projection's input to the adapter's fp32 dtype; under bf16/fp16
    autocast the adapter's first matmul keeps its own compute-dtype copy of that input. Dropout
    (p > 0) keeps its mask and hands the matmul a new tensor, so there is one copy per adapted
    projection at any precision; in fp32 without dropout the matmuls keep their (shared) inputs
    themselves. The rank-r output is kept by the second matmul.
    """
    if method.type == "adapter":
        return len(BOTTLENECK_MODULES) * (b * shape.hidden_size + 2 * b * method.bottleneck_size)
    if method.type not in ("lora", "qlora"):
        return 0
    targets = {n: s for n, s in shape.linear_shapes().items() if n in method.target_modules}
    rank_outputs = len(targets) * b * method.rank
    if method.dropout > 0:
        return rank_outputs + sum((mask + b) * fan_in for fan_in, _ in targets.values())
    if b < 4:
        return rank_outputs + sum(b * fan_in for fan_in, _ in targets.values())
    shared = {LORA_INPUTS.get(n, n): fan_in for n, (fan_in, _) in targets.items()}
    shared.pop("attn_out", None)  # the attention kernel keeps its output already
    return rank_outputs + b * sum(shared.values())


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
) -> MemoryEstimate:
    """Peak memory per GPU of training `cfg` on `world_size` GPUs (see the module docstring).

    `device="cpu"` models a CPU run instead (dropout masks are as wide as their input there);
    the tests use it to check the formula against CPU training steps.
    """
    shape = (
        model_config
        if isinstance(model_config, ModelShape)
        else ModelShape.from_config(model_config)
    )
    t, method = cfg.training, cfg.method
    b = DTYPE_BYTES[t.precision]
    seq = seq_len or cfg.dataset.max_input_tokens + cfg.dataset.max_target_tokens
    micro = t.resolved_micro_batch(world_size)
    tokens = (
        (t.max_tokens_per_batch or micro * seq) if t.dynamic_batching == "packing" else micro * seq
    )
    checkpointing = t.gradient_checkpointing and method.type != "prefix-tuning"
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
    chunk = min(t.loss_chunk_size, tokens)
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
    )


def _notes(cfg: TrainerConfig, checkpointing: bool) -> list[str]:
    notes = []
    if cfg.method.type == "prefix-tuning" and cfg.training.gradient_checkpointing:
        notes.append("prefix-tuning turns gradient checkpointing off; estimated without it")
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


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="training config (any form kubetune reads)")
    p.add_argument("--gpu-memory", required=True, help="memory of one GPU, e.g. 80GiB or 24GB")
    p.add_argument("--gpus", type=int, default=1, help="GPUs training together (default 1)")
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="tokens per sequence (default: dataset.maxInputTokens + maxTargetTokens)",
    )
    p.add_argument("--model", default=None, help="model directory or hub id (default: model.name)")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "kubetune estimate") -> int:
    """Print the breakdown; exit 0 if it fits, 1 if not, 2 for a bad config or model."""
    args = build_parser(prog).parse_args(argv)
    try:
        gpu = parse_size(args.gpu_memory)
        if args.gpus < 1:
            raise ValueError(f"--gpus must be >= 1, got {args.gpus}")
        cfg = load_trainer_config(args.config)
        shape = model_shape(args.model or cfg.model.name)
        est = estimate_memory(cfg, shape, world_size=args.gpus, seq_len=args.seq_len)
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}")
        return 2
    except ValueError as err:
        print(f"error: {err}")
        return 2
    _print_report(cfg, shape, est, gpu)
    return 0 if est.total_bytes <= gpu else 1


def _print_report(cfg: TrainerConfig, shape: ModelShape, est: MemoryEstimate, gpu: int) -> None:
    t = cfg.training
    print(
        f"model: {shape.total_params / 1e9:.2f}B parameters ({shape.num_layers} layers, hidden "
        f"{shape.hidden_size}, vocab {shape.vocab_size}); method {cfg.method.type} "
        f"(trains {est.trainable_params:,}); precision {t.precision}; "
        f"{est.tokens_per_micro_batch} tokens per micro-batch; checkpointing "
        f"{'on' if t.gradient_checkpointing else 'off'}; ZeRO-{t.zero_stage} on {est.world_size} GPU(s)"
    )
    print(est.table(gpu))
    for note in est.notes:
        print(f"note: {note}")
    verdict = "fits" if est.total_bytes <= gpu else "does NOT fit"
    print(f"{verdict}: {est.total_bytes / GIB:.2f} GiB needed, {gpu / GIB:.2f} GiB per GPU")
