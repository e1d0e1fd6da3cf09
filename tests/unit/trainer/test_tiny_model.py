"""Unit tests for `kubetune_trainer.tiny_model`: the small-vocabulary random Qwen3 checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune_trainer import qwen3_tokenizer as qt
from kubetune_trainer.tiny_model import (
    SHAPES,
    build_small_tokenizer,
    count_parameters,
    main,
    qwen3_config,
)

ONE_TURN = [{"role": "user", "content": "如何申请信用卡？"}]


def test_loads_with_from_pretrained_as_qwen3(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert isinstance(model, Qwen3ForCausalLM)
    assert model.config.model_type == "qwen3"
    assert model.config.vocab_size >= len(tokenizer)
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"


def test_forward_pass_gives_logits_over_the_vocabulary(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = tokenizer("用户：如何申请信用卡？\nAI助手：", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)


def test_generation_config_stops_on_im_end_and_endoftext(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    generation = GenerationConfig.from_pretrained(str(tiny_model_dir))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert generation.eos_token_id == [im_end, end_of_text]
    assert generation.pad_token_id == end_of_text


def test_chat_template_non_thinking_one_turn(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    text = tokenizer.apply_chat_template(
        ONE_TURN, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    expected = (
        "<|im_start|>user\n如何申请信用卡？<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert text == expected


def test_chat_template_thinking_mode_leaves_think_to_the_model() -> None:
    tokenizer = build_small_tokenizer()
    text = tokenizer.apply_chat_template(ONE_TURN, tokenize=False, add_generation_prompt=True)
    assert isinstance(text, str)
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_small_tokenizer_has_qwen3_added_tokens_in_qwen3_order(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = tokenizer.convert_tokens_to_ids(list(qt.QWEN3_ADDED_TOKENS))
    first = len(tokenizer) - len(qt.QWEN3_ADDED_TOKENS)
    assert ids == list(range(first, len(tokenizer)))
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert 2000 <= first <= 4000


def test_small_tokenizer_keeps_control_tokens_whole_and_round_trips() -> None:
    tokenizer = build_small_tokenizer()
    text = "<|im_start|>user\n用户：如何申请信用卡？\nAI助手：<think>\n\n</think>\n\nHi<|im_end|>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.convert_tokens_to_ids("<think>") in ids
    assert tokenizer.decode(ids) == text


def test_small_tokenizer_is_deterministic() -> None:
    first, second = build_small_tokenizer(), build_small_tokenizer()
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


def test_same_seed_same_weights(tmp_path: Path) -> None:
    from kubetune_trainer.tiny_model import build_tiny_model

    a = build_tiny_model(tmp_path / "a", seed=3)
    b = build_tiny_model(tmp_path / "b", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_8b_shape_config_matches_qwen3_8b_without_allocating() -> None:
    config = qwen3_config("8b-shape", qt.QWEN3_MODEL_VOCAB_SIZE)
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (
        4096,
        36,
        12288,
    )
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (32, 8, 128)
    assert config.max_position_embeddings == 40960
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 1_000_000}
    assert config.tie_word_embeddings is False
    assert SHAPES["tiny"].tie_embeddings is True


def test_8b_shape_has_qwen3_8b_parameter_count_on_meta_device() -> None:
    import torch
    from transformers import Qwen3ForCausalLM

    with torch.device("meta"):
        model = Qwen3ForCausalLM(qwen3_config("8b-shape", qt.QWEN3_MODEL_VOCAB_SIZE))
    assert sum(p.numel() for p in model.parameters()) == 8_190_735_360


def test_8b_shape_is_never_allocated_by_build_tiny_model(tmp_path: Path) -> None:
    from kubetune_trainer.tiny_model import build_tiny_model

    with pytest.raises(ValueError, match="8b-shape"):
        build_tiny_model(tmp_path, size="8b-shape")


def test_unknown_size_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match="'huge'"):
        qwen3_config("huge", 1000)  # type: ignore[arg-type]


def test_cli_prints_parameter_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path / "m"), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert f"parameters: {count_parameters(tmp_path / 'm'):,}" in out
    assert "model.safetensors" in out
