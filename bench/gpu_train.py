"""GPU training figures for a Qwen3-8B-shaped model: LoRA bf16 and QLoRA tokens/s, MFU, peak memory.

    python bench/gpu_train.py [--size 8b-shape] [--seq 2048] [--steps 6] [--methods lora,qlora]

Run by bench/gpu_train.sh on a lent GPU (no hub there: the model is Qwen3-8B's real config with
random weights, built directly on the GPU). It drives the trainer's own pieces: `apply_method`
(peft LoRA on all projections, r=16), non-reentrant gradient checkpointing, the fused chunked
loss and AdamW, at micro-batch 1 with `--seq` tokens (all supervised). QLoRA quantises the
random bf16 base to NF4 (double quantisation) with bitsandbytes the way `from_pretrained` with
`BitsAndBytesConfig` would. MFU counts model FLOPs per token as 2N (forward) + 2N (activation
gradients; frozen weights get none) + attention (4·L·T·d per token forward, x2 backward),
against the card's dense bf16 peak (`--peak-tflops`, default 989 for H100/H200 SXM).
`--size tiny --device cpu` is a smoke test of the same code on the CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from typing import Any

import torch
from torch import nn

from kubetune_api.finetune import MethodSpec
from kubetune_api.methods import METHODS
from kubetune_trainer.loss import fused_loss
from kubetune_trainer.methods import apply_method
from kubetune_trainer.tiny_model import qwen3_config


def build_model(size: str, device: torch.device, quantize: bool) -> nn.Module:
    from transformers import Qwen3ForCausalLM

    config = qwen3_config(size, 151_936)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(
        torch.bfloat16
    )  # build in bf16: an fp32 8B model would need 33 GB first
    try:
        with device:
            model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    if quantize:
        _quantize_nf4(model, device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _quantize_nf4(model: nn.Module, device: torch.device) -> None:
    """Swap every decoder nn.Linear for a bitsandbytes NF4 Linear4bit (lm_head stays bf16)."""
    import bitsandbytes as bnb

    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear) or child_name == "lm_head":
                continue
            q = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=torch.bfloat16,
                quant_type="nf4",
                compress_statistics=True,
                device="meta",
            )
            q.weight = bnb.nn.Params4bit(
                child.weight.data.to("cpu"),
                requires_grad=False,
                quant_type="nf4",
                compress_statistics=True,
            ).to(device)
            setattr(module, child_name, q)
            del child
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def flops_per_token(model: nn.Module, config: Any, seq: int) -> float:
    n = sum(p.numel() for n_, p in model.named_parameters() if "embed_tokens" not in n_)
    if getattr(config, "tie_word_embeddings", False):
        n += config.vocab_size * config.hidden_size
    attn = (
        4 * config.num_hidden_layers * seq * config.num_attention_heads * config.head_dim / 2
    )  # causal
    return (2 * n + attn) + (2 * n + 2 * attn)


def bench(method: str, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    base = build_model(args.size, device, quantize=METHODS[method].quantized_base)
    if device.type == "cuda":  # peak of training only, not of building the random weights
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    config = base.config
    spec = MethodSpec(type=method, rank=16, alpha=32, dropout=0.0)
    model, info = apply_method(base, spec, gradient_checkpointing=True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, 151_000, (1, args.seq), device=device)
    times = []
    for step in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16), fused_loss(model, ids, 4096) as out:
            model(input_ids=ids, use_cache=False)
        (out[0].loss_sum / out[0].tokens).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        print(
            f"  {method} step {step}: {times[-1]:.3f}s loss {float(out[0].loss_sum / out[0].tokens):.3f}",
            flush=True,
        )
    steady = sorted(times[2:] or times)[len(times[2:] or times) // 2]  # median after warm-up
    tok_s = args.seq / steady
    mfu = tok_s * flops_per_token(base, config, args.seq) / (args.peak_tflops * 1e12)
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    )
    result = {
        "method": method,
        "tokens_per_second": round(tok_s, 1),
        "mfu": round(mfu, 4),
        "peak_memory_gib": round(peak, 2),
        "trainable_params": info.trainable_params,
        "step_seconds_median": round(steady, 4),
    }
    del model, base, opt
    gc.collect()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="8b-shape")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--methods", default="lora,qlora")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    args = p.parse_args()
    card = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"card: {card}; torch {torch.__version__}; size {args.size}; seq {args.seq}; micro-batch 1"
    )
    results = [bench(m, args) for m in args.methods.split(",")]
    print(f"{'method':<8}{'tok/s':>10}{'MFU':>8}{'peak GiB':>10}{'trainable':>12}")
    for r in results:
        print(
            f"{r['method']:<8}{r['tokens_per_second']:>10.0f}{r['mfu']:>8.1%}{r['peak_memory_gib']:>10.2f}"
            f"{r['trainable_params']:>12,}"
        )
    print(json.dumps({"card": card, "results": results}))


if __name__ == "__main__":
    main()
