"""`apply_method` on the tiny Qwen3: what trains, how much, and that training changes the model.

Tiny shape: hidden 64, 2 layers, 4 heads, 2 KV heads of 16, MLP 128 (see `tiny_model.SHAPES`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from kubetune_api.finetune import MethodSpec
from kubetune_trainer.methods import MethodConfigError, apply_method, load_base_model
from kubetune_trainer.methods.lora import module_shapes

SPECS = {
    "lora": MethodSpec(type="lora", rank=4, dropout=0.0),
    "qlora": MethodSpec(type="qlora", rank=4, dropout=0.0),
    "adapter": MethodSpec(type="adapter", bottleneck_size=8, dropout=0.0),
    "prefix-tuning": MethodSpec(type="prefix-tuning", num_virtual_tokens=5),
}


def load(model_dir: Path, method: MethodSpec) -> nn.Module:
    return load_base_model(str(model_dir), method, dtype=torch.float32)


def batch(model: nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, model.config.vocab_size, (2, 12), generator=gen)


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def train_step(model: nn.Module, ids: torch.Tensor) -> None:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()


def expected_trainable(kind: str, config: object) -> int:
    layers = config.num_hidden_layers  # type: ignore[attr-defined]
    shapes = module_shapes(config)
    if kind in ("lora", "qlora"):
        return (
            layers
            * 4
            * sum(i + o for n, (i, o) in shapes.items() if n not in ("lm_head", "embed_tokens"))
        )
    if kind == "adapter":  # down (64x8 + 8) and up (8x64 + 64) after o_proj and after down_proj
        hidden = config.hidden_size  # type: ignore[attr-defined]
        return layers * 2 * (2 * hidden * 8 + 8 + hidden)
    kv = config.num_key_value_heads * config.head_dim  # type: ignore[attr-defined]
    return 5 * layers * 2 * kv


@pytest.mark.parametrize("kind", list(SPECS))
def test_only_the_methods_parameters_train(kind: str, tiny_model_dir: Path) -> None:
    base = load(tiny_model_dir, SPECS[kind])
    base_total = sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in base.parameters())
    model, info = apply_method(base, SPECS[kind], gradient_checkpointing=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    marker = {
        "lora": "lora_",
        "qlora": "lora_",
        "adapter": "bottleneck_",
        "prefix-tuning": "prompt_encoder",
    }
    assert trainable and all(marker[kind] in n for n in trainable)
    assert info.trainable_params == expected_trainable(kind, base.config)
    assert info.total_params == base_total + info.trainable_params
    assert info.trainable_fraction == pytest.approx(info.trainable_params / info.total_params)


def test_bottleneck_starts_as_the_base_model_and_a_step_changes_it(tiny_model_dir: Path) -> None:
    base = load(tiny_model_dir, SPECS["adapter"])
    ids = batch(base)
    before = logits(base, ids)
    model, _ = apply_method(base, SPECS["adapter"], gradient_checkpointing=True)
    layer = model.base_model.model.model.layers[0]
    assert type(layer.self_attn.o_proj).__name__ == "BottleneckLayer"
    assert type(layer.mlp.down_proj).__name__ == "BottleneckLayer"
    torch.testing.assert_close(logits(model, ids), before, rtol=0, atol=0)
    train_step(model, ids)
    assert (logits(model, ids) - before).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["lora", "qlora"])
def test_lora_starts_as_the_base_and_a_step_changes_it(kind: str, tiny_model_dir: Path) -> None:
    base = load(tiny_model_dir, SPECS[kind])
    ids = batch(base)
    before = logits(base, ids)
    model, info = apply_method(base, SPECS[kind], gradient_checkpointing=True)
    assert info.gradient_checkpointing and model.get_base_model().is_activation_checkpointing
    torch.testing.assert_close(logits(model, ids), before, rtol=0, atol=0)
    train_step(model, ids)
    assert (logits(model, ids) - before).abs().max() > 1e-3


def test_prefix_tuning_turns_checkpointing_off_with_a_warning(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = load(tiny_model_dir, SPECS["prefix-tuning"])
    ids = batch(base)
    with caplog.at_level(logging.WARNING, logger="kubetune_trainer.methods"):
        model, info = apply_method(base, SPECS["prefix-tuning"], gradient_checkpointing=True)
    assert not info.gradient_checkpointing
    assert any("prefix-tuning cannot use gradient checkpointing" in n for n in info.notes)
    assert "prefix-tuning cannot use gradient checkpointing" in caplog.text
    before = logits(model, ids)
    train_step(model, ids)
    grad = model.prompt_encoder["default"].embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert (logits(model, ids) - before).abs().max() > 1e-4


def test_qlora_base_is_4bit_and_trains_through_the_frozen_layers(tiny_model_dir: Path) -> None:
    import bitsandbytes as bnb

    base = load(tiny_model_dir, SPECS["qlora"])
    attn = base.model.layers[0].self_attn
    assert isinstance(attn.q_proj, bnb.nn.Linear4bit) and attn.q_proj.weight.dtype == torch.uint8
    model, _ = apply_method(base, SPECS["qlora"], gradient_checkpointing=False)
    ids = batch(base)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "layers.0." in n and "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_qlora_cpu_layers_stay_exact_and_differentiable_after_an_eval_forward(
    tiny_model_dir: Path,
) -> None:
    """bitsandbytes 0.50 would repack weights for a bf16 CPU kernel without autograd here."""
    from bitsandbytes.functional import dequantize_4bit

    base = load(tiny_model_dir, SPECS["qlora"])
    logits(base, batch(base))  # eval + no_grad: the trigger for the repacking
    layer = base.model.layers[0].mlp.down_proj
    weight = dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    x = torch.randn(3, weight.shape[1], requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, x @ weight.T)
    y.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.ones(3, weight.shape[0]) @ weight)


def test_apply_rejects_a_method_the_model_cannot_take(tiny_model_dir: Path) -> None:
    base = load(tiny_model_dir, SPECS["lora"])
    with pytest.raises(MethodConfigError, match=r"method\.bottleneckSize \(64\)"):
        apply_method(base, MethodSpec(type="adapter"), gradient_checkpointing=False)
    with pytest.raises(MethodConfigError, match=r"method\.rank \(128\)"):
        load_base_model(str(tiny_model_dir), MethodSpec(rank=128), dtype=torch.float32)


def test_qlora_on_a_full_precision_base_says_it_trains_plain_lora(tiny_model_dir: Path) -> None:
    base = load(tiny_model_dir, SPECS["lora"])
    _, info = apply_method(base, SPECS["qlora"], gradient_checkpointing=False)
    assert "method.type 'qlora' on a base that is not 4-bit: this trains plain LoRA" in info.notes
