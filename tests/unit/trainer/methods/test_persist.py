"""Save, reload, merge and checkpoint adapters of every method on the tiny Qwen3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from torch import nn

from kubetune_api.finetune import MethodSpec
from kubetune_trainer.methods import (
    MergeNotSupportedError,
    apply_method,
    load_adapter,
    load_base_model,
    load_trainable_state_dict,
    merge_and_unload,
    save_adapter,
    trainable_state_dict,
)

SPECS = {
    "lora": MethodSpec(type="lora", rank=4, dropout=0.0),
    "qlora": MethodSpec(type="qlora", rank=4, dropout=0.0),
    "adapter": MethodSpec(type="adapter", bottleneck_size=8, dropout=0.0),
    "prefix-tuning": MethodSpec(type="prefix-tuning", num_virtual_tokens=5),
}


def load(model_dir: Path, kind: str) -> nn.Module:
    return load_base_model(str(model_dir), SPECS[kind], dtype=torch.float32)


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def trained(model_dir: Path, kind: str, steps: int = 2) -> tuple[PeftModel, torch.Tensor]:
    """The method applied and trained a few steps (so zero-initialised weights are not zero)."""
    base = load(model_dir, kind)
    model, _ = apply_method(base, SPECS[kind], gradient_checkpointing=False)
    ids = torch.randint(
        0, base.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0)
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return model, ids


@pytest.mark.parametrize("kind", list(SPECS))
def test_saved_adapter_reloads_onto_a_fresh_base_exactly(
    kind: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model, ids = trained(tiny_model_dir, kind)
    expected = logits(model, ids)
    save_adapter(model, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in (tmp_path / "adapter").iterdir()
    }
    reloaded = load_adapter(load(tiny_model_dir, kind), tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded, ids), expected, rtol=0, atol=1e-5)
    assert not any(p.requires_grad for p in reloaded.parameters())


def test_bottleneck_adapter_is_a_peft_method(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, ids = trained(tiny_model_dir, "adapter")
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "KUBETUNE_BOTTLENECK" and config["bottleneck_size"] == 8
    reloaded = PeftModel.from_pretrained(load(tiny_model_dir, "adapter"), str(tmp_path))
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids), rtol=0, atol=1e-5)


def test_adapter_directory_carries_the_tokenizer_and_chat_template(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model, _ = trained(tiny_model_dir, "lora", steps=0)
    save_adapter(model, tmp_path, tokenizer=tokenizer)
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tokenizer.chat_template and again.chat_template == tokenizer.chat_template
    assert again("你好 hello").input_ids == tokenizer("你好 hello").input_ids


@pytest.mark.parametrize("kind", ["lora", "prefix-tuning"])
def test_save_takes_weights_from_a_given_state_dict(
    kind: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The training loop passes the gathered full state dict when parameters are sharded."""
    model, ids = trained(tiny_model_dir, kind)
    gathered = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    expected = logits(model, ids)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.zero_()
    save_adapter(model, tmp_path, state_dict=gathered)
    reloaded = load_adapter(load(tiny_model_dir, kind), tmp_path)
    torch.testing.assert_close(logits(reloaded, ids), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["lora", "qlora"])
def test_merged_model_reproduces_the_adapter_model(kind: str, tiny_model_dir: Path) -> None:
    model, ids = trained(tiny_model_dir, kind)
    expected = logits(model, ids)
    merged = merge_and_unload(model)
    assert type(merged).__name__ == "Qwen3ForCausalLM"
    assert not any(type(m).__name__ in ("Linear4bit", "LoraLayer") for m in merged.modules())
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    torch.testing.assert_close(logits(merged, ids), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("kind", "reason"), [("adapter", "nonlinear"), ("prefix-tuning", "KV cache")]
)
def test_methods_that_cannot_merge_say_why(kind: str, reason: str, tiny_model_dir: Path) -> None:
    model, _ = trained(tiny_model_dir, kind, steps=0)
    with pytest.raises(MergeNotSupportedError, match=reason):
        merge_and_unload(model)


@pytest.mark.parametrize("kind", list(SPECS))
def test_trainable_state_dict_restores_a_fresh_model_exactly(
    kind: str, tiny_model_dir: Path
) -> None:
    model, ids = trained(tiny_model_dir, kind)
    state = trainable_state_dict(model)
    assert state and all(model.get_parameter(n).requires_grad for n in state)
    fresh, _ = apply_method(load(tiny_model_dir, kind), SPECS[kind], gradient_checkpointing=False)
    load_trainable_state_dict(fresh, state)
    torch.testing.assert_close(logits(fresh, ids), logits(model, ids), rtol=0, atol=0)


def test_trainable_state_dict_mismatch_names_the_keys(tiny_model_dir: Path) -> None:
    model, _ = trained(tiny_model_dir, "lora", steps=0)
    state = trainable_state_dict(model)
    missing = sorted(state)[0]
    del state[missing]
    state["bogus.weight"] = torch.zeros(1)
    with pytest.raises(
        KeyError, match=r"missing \[.*lora_A.*\] \(1\), unexpected \['bogus.weight'\] \(1\)"
    ):
        load_trainable_state_dict(model, state)


def test_save_and_merge_refuse_a_plain_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    base = load(tiny_model_dir, "lora")
    with pytest.raises(TypeError, match=r"expected a peft\.PeftModel"):
        save_adapter(base, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no adapter_config\.json"):
        load_adapter(base, tmp_path)
