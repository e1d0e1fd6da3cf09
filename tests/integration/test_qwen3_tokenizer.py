"""Integration tests for the genuine Qwen3 tokenizer built from dashscope's `qwen.tiktoken`.

The reference is tiktoken itself running over the same ranks, so the conversion to a Hugging Face
fast tokenizer is checked against an independent BPE implementation, not against itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kubetune_trainer import qwen3_tokenizer as qt

if TYPE_CHECKING:
    import tiktoken
    from transformers import PreTrainedTokenizerFast

pytestmark = pytest.mark.integration

SEED_LINE = "用户：如何申请信用卡？\nAI助手："
SAMPLES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. I'll pay $1,234.56 on 2025-01-31!",
    "  indented\n\n\tcode = {'a': [1, 2, 3]}  \r\n",
    "信用卡的年费是多少？普卡首年免年费，刷卡满六次可免次年年费。",
    "混合 mixed 文本 text 123 ４５６ 🙂 café",
    SEED_LINE,
]


@pytest.fixture(scope="module")
def reference(qwen3_tokenizer: PreTrainedTokenizerFast) -> tiktoken.Encoding:
    """tiktoken over the same ranks (depends on `qwen3_tokenizer` only to share its skip)."""
    return qt.qwen3_tiktoken_encoding()


def test_length_and_control_token_ids(qwen3_tokenizer: PreTrainedTokenizerFast) -> None:
    assert len(qwen3_tokenizer) == 151_669
    ids = qwen3_tokenizer.convert_tokens_to_ids(list(qt.QWEN3_ADDED_TOKENS))
    assert ids == list(range(151_643, 151_669))
    assert qwen3_tokenizer.convert_tokens_to_ids("<|im_start|>") == 151_644
    assert qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>") == 151_645
    assert qwen3_tokenizer.convert_tokens_to_ids("<think>") == 151_667
    assert (qwen3_tokenizer.eos_token_id, qwen3_tokenizer.pad_token_id) == (151_645, 151_643)


def test_loads_as_qwen2_tokenizer_like_real_qwen3(qwen3_tokenizer: PreTrainedTokenizerFast) -> None:
    assert type(qwen3_tokenizer).__name__ == "Qwen2Tokenizer"
    assert qwen3_tokenizer.bos_token is None


@pytest.mark.parametrize("text", SAMPLES)
def test_encodes_like_tiktoken_with_the_same_ranks(
    qwen3_tokenizer: PreTrainedTokenizerFast, reference: tiktoken.Encoding, text: str
) -> None:
    ids = qwen3_tokenizer.encode(text, add_special_tokens=False)
    assert ids == reference.encode(text)
    assert qwen3_tokenizer.decode(ids) == text


def test_known_ids_of_the_genuine_vocabulary(qwen3_tokenizer: PreTrainedTokenizerFast) -> None:
    # "Hello world" is [9707, 1879] in every Qwen2/2.5/3 tokenizer.
    assert qwen3_tokenizer.encode("Hello world", add_special_tokens=False) == [9707, 1879]


def test_nfc_normalizer_like_qwen(qwen3_tokenizer: PreTrainedTokenizerFast) -> None:
    decomposed, composed = "cafe\u0301", "caf\u00e9"
    assert qwen3_tokenizer.encode(decomposed) == qwen3_tokenizer.encode(composed)


def test_chat_markup_tokenizes_control_tokens_whole(
    qwen3_tokenizer: PreTrainedTokenizerFast, reference: tiktoken.Encoding
) -> None:
    messages = [{"role": "user", "content": SEED_LINE}]
    text = qwen3_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert isinstance(text, str)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids = qwen3_tokenizer.encode(text, add_special_tokens=False)
    assert ids == reference.encode(text, allowed_special="all")
    assert ids[0] == 151_644
    assert 151_667 in ids and 151_668 in ids
    assert qwen3_tokenizer.decode(ids) == text


def test_cache_is_reused(qwen3_tokenizer: PreTrainedTokenizerFast) -> None:
    first, second = qt.qwen3_tokenizer_dir(), qt.qwen3_tokenizer_dir()
    assert first == second
    assert (first / "tokenizer.json").is_file()


def test_tiny_model_with_genuine_vocab_loads(qwen3_tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(qwen3_tiny_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(qwen3_tiny_model_dir))
    assert model.config.vocab_size == 151_936
    assert len(tokenizer) == 151_669
    assert (model.config.bos_token_id, model.config.eos_token_id) == (151_643, 151_645)
