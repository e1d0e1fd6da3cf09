"""`validate_method`: every problem of a `spec.method` at once, each naming its field and value."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import LlamaConfig, Qwen3Config

from kubetune_api.finetune import MethodSpec
from kubetune_trainer.methods import MethodConfigError, check_method, validate_method


def tiny_config(**overrides: Any) -> Qwen3Config:
    shape: dict[str, Any] = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=512,
        max_position_embeddings=1024,
    )
    return Qwen3Config(**(shape | overrides))


@pytest.mark.parametrize("kind", ["lora", "qlora", "adapter", "prefix-tuning"])
def test_defaults_fit_a_real_sized_model(kind: str) -> None:
    config = tiny_config(
        hidden_size=4096,
        head_dim=128,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=12288,
        max_position_embeddings=40960,
    )
    assert validate_method(MethodSpec(type=kind), config) == []


def test_lora_reports_every_problem_at_once() -> None:
    method = MethodSpec(type="lora", rank=512, target_modules=["q_proj", "qkv_proj", "mlp.fc1"])
    problems = validate_method(method, tiny_config())
    assert len(problems) == 3
    assert "method.targetModules contains 'qkv_proj'" in problems[0]
    assert "method.targetModules contains 'mlp.fc1'" in problems[1]
    assert problems[2] == "method.rank (512) must be <= the model's hidden size (64)"


def test_rank_above_a_targets_smallest_dimension_names_the_module() -> None:
    # k_proj and v_proj map 64 -> 2 kv heads x 16 = 32
    problems = validate_method(MethodSpec(rank=48), tiny_config())
    assert problems == [
        "method.rank (48) must be <= the smallest dimension of k_proj (32)",
        "method.rank (48) must be <= the smallest dimension of v_proj (32)",
    ]
    assert (
        validate_method(MethodSpec(rank=48, target_modules=["q_proj", "o_proj"]), tiny_config())
        == []
    )


def test_qualified_names_head_embeddings_and_all_linear_are_accepted() -> None:
    ok = ["self_attn.q_proj", "mlp.down_proj", "lm_head", "embed_tokens"]
    assert validate_method(MethodSpec(rank=8, target_modules=ok), tiny_config()) == []
    assert validate_method(MethodSpec(rank=8, target_modules=["all-linear"]), tiny_config()) == []
    mixed = validate_method(MethodSpec(target_modules=["all-linear", "q_proj"]), tiny_config())
    assert mixed == [
        "method.targetModules: 'all-linear' must be the only entry, got ['all-linear', 'q_proj']"
    ]


def test_bottleneck_must_be_narrower_than_the_hidden_state() -> None:
    problems = validate_method(MethodSpec(type="adapter", bottleneck_size=64), tiny_config())
    assert len(problems) == 1
    assert problems[0].startswith(
        "method.bottleneckSize (64) must be < the model's hidden size (64)"
    )
    assert validate_method(MethodSpec(type="adapter", bottleneck_size=63), tiny_config()) == []


def test_prefix_must_fit_the_positions_with_the_longest_sequence() -> None:
    config = tiny_config(max_position_embeddings=256)
    too_long = validate_method(MethodSpec(type="prefix-tuning", num_virtual_tokens=300), config)
    assert too_long == [
        "method.numVirtualTokens (300) must be < the model's max_position_embeddings (256)"
    ]
    with_seq = validate_method(
        MethodSpec(type="prefix-tuning", num_virtual_tokens=20), config, max_seq_len=240
    )
    assert with_seq == [
        "method.numVirtualTokens (20) + the longest sequence (240) must be <= the model's "
        "max_position_embeddings (256)"
    ]
    assert (
        validate_method(
            MethodSpec(type="prefix-tuning", num_virtual_tokens=16), config, max_seq_len=240
        )
        == []
    )


def test_methods_only_check_their_own_fields() -> None:
    # a LoRA-only problem (unknown module) does not fail the adapter or prefix-tuning
    for kind in ("adapter", "prefix-tuning"):
        method = MethodSpec(type=kind, target_modules=["nope"], rank=999, bottleneck_size=16)
        assert validate_method(method, tiny_config()) == []


def test_unsupported_architecture_is_reported() -> None:
    from transformers import GPT2Config

    assert validate_method(MethodSpec(), LlamaConfig(hidden_size=64, intermediate_size=128)) == []
    problems = validate_method(MethodSpec(), GPT2Config())
    assert problems == [
        "model type 'gpt2' is not supported by the PEFT methods (supported: qwen3, qwen2, llama, mistral)"
    ]


def test_check_method_raises_with_all_problems() -> None:
    with pytest.raises(MethodConfigError) as err:
        check_method(MethodSpec(rank=512, target_modules=["foo"]), tiny_config())
    assert len(err.value.problems) == 2
    assert "method.rank (512)" in str(err.value) and "'foo'" in str(err.value)
    assert isinstance(err.value, ValueError)
