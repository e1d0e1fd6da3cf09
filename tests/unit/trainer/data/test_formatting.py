"""Qwen3 chat formatting and loss masking: what is supervised, and that tokens match inference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from kubetune_api.finetune import DatasetSpec
from kubetune_trainer.data import IGNORE_INDEX, ChatEncoder, Example, load_examples
from kubetune_trainer.data.jsonl import Row, RowError, Turn

SAMPLES = Path(__file__).parents[4] / "examples" / "data"
SEED_INPUT = "用户：如何申请信用卡？\nAI助手："
SEED_TARGET = "您可通过银行官网、手机APP或线下网点提交申请，需准备身份证、收入证明等材料。"
GENERATION_TAIL = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(params=["small", "genuine"])
def any_tokenizer(request: pytest.FixtureRequest) -> PreTrainedTokenizerBase:
    """The small test vocabulary, and the genuine Qwen3 one where qwen.tiktoken is available."""
    if request.param == "small":
        return request.getfixturevalue("tokenizer")
    return request.getfixturevalue("qwen3_tokenizer")


def chat(*pairs: tuple[str, str]) -> Row:
    return Row(1, turns=tuple(Turn(role, content) for role, content in pairs))


def encode(tok: PreTrainedTokenizerBase, row: Row) -> Example:
    return ChatEncoder(tok).encode(row).to_example(row.line, None)


def supervised_runs(example: Example) -> list[list[int]]:
    """Consecutive stretches of supervised labels."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in example.labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


def test_seed_row_masks_the_prompt_and_ends_with_im_end(
    any_tokenizer: PreTrainedTokenizerBase,
) -> None:
    tok = any_tokenizer
    example = encode(tok, chat(("user", SEED_INPUT), ("assistant", SEED_TARGET)))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    first = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": SEED_INPUT}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    )
    assert prompt.endswith(GENERATION_TAIL)
    assert example.input_ids[:first] == tok(prompt, add_special_tokens=False)["input_ids"]
    assert all(label == IGNORE_INDEX for label in example.labels[:first])
    assert example.labels[first:] == example.input_ids[first:]
    assert example.labels[-1] == example.input_ids[-1] == im_end
    assert tok.decode(example.labels[first:]) == SEED_TARGET + "<|im_end|>"


def _sample_rows() -> list[Row]:
    rows = []
    for name in ("train.jsonl", "eval.jsonl"):
        for line in (SAMPLES / name).read_text(encoding="utf-8").splitlines():
            obj = json.loads(line)
            rows.append(chat(("user", obj["input"]), ("assistant", obj["target"])))
    for line in (SAMPLES / "messages.jsonl").read_text(encoding="utf-8").splitlines():
        rows.append(chat(*((m["role"], m["content"]) for m in json.loads(line)["messages"])))
    return rows


def test_separate_tokenization_equals_the_full_rendering(
    any_tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Prompt and answers tokenized apart give the same ids as the whole conversation."""
    tok = any_tokenizer
    encoder = ChatEncoder(tok)
    for row in _sample_rows():
        full = encoder.render(row.turns)
        full = full[: full.rindex("<|im_end|>") + len("<|im_end|>")]
        assert encoder.encode(row).ids == tok(full, add_special_tokens=False)["input_ids"], full


def test_messages_supervise_every_answer_and_nothing_else(
    any_tokenizer: PreTrainedTokenizerBase,
) -> None:
    tok = any_tokenizer
    row = chat(
        ("system", "你是银行客服。"),
        ("user", "如何激活新卡？"),
        ("assistant", "在手机APP中激活。"),
        ("user", "Is there an annual fee?"),
        ("assistant", "The first year is free."),
        ("user", "thanks"),  # after the last answer: dropped
    )
    example = encode(tok, row)
    runs = [tok.decode(run) for run in supervised_runs(example)]
    assert runs == ["在手机APP中激活。<|im_end|>", "The first year is free.<|im_end|>"]
    assert "thanks" not in tok.decode(example.input_ids)
    text = tok.decode(example.input_ids)
    # Qwen3 renders earlier answers without the empty think block, the last one with it.
    assert "<|im_start|>assistant\n在手机" in text
    assert text.endswith(GENERATION_TAIL + "The first year is free.<|im_end|>")


def test_text_rows_supervise_everything_and_end_with_endoftext(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    example = (
        ChatEncoder(tokenizer).encode(Row(3, text="信用卡积分有效期为3年。")).to_example(3, "cpt")
    )
    assert example.input_ids[-1] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert example.labels[0] == IGNORE_INDEX  # nothing predicts the first token
    assert example.labels[1:] == example.input_ids[1:]
    assert (example.line, example.task) == (3, "cpt")


def test_leading_newlines_of_an_answer_follow_the_template(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Qwen3's template strips an answer's leading newlines; so does the supervised text."""
    example = encode(tokenizer, chat(("user", "hi"), ("assistant", "\n\nHello.")))
    assert [tokenizer.decode(run) for run in supervised_runs(example)] == ["Hello.<|im_end|>"]


@pytest.mark.parametrize("target", [" \nleading space and newline", "\r\nwindows", "   "])
def test_prompt_tokens_are_what_inference_sees(
    tokenizer: PreTrainedTokenizerBase, target: str
) -> None:
    """Even where a merge could straddle the boundary, the prompt is tokenized as at inference."""
    encoder = ChatEncoder(tokenizer)
    enc = encoder.encode(chat(("user", "q"), ("assistant", target)))
    prompt = encoder.render((Turn("user", "q"),), generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert enc.ids[: len(prompt_ids)] == prompt_ids
    stripped = target.lstrip("\n")
    assert (
        enc.ids[len(prompt_ids) : -1] == tokenizer(stripped, add_special_tokens=False)["input_ids"]
    )


def test_think_block_in_an_answer_is_rejected(tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(RowError, match=r"messages\[1\].content is changed by the chat template"):
        encode(tokenizer, chat(("user", "q"), ("assistant", "<think>hmm</think>answer")))


@pytest.mark.parametrize("token", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
def test_control_tokens_in_content_are_rejected(
    tokenizer: PreTrainedTokenizerBase, token: str
) -> None:
    with pytest.raises(RowError, match=r"messages\[0\].content contains the control token"):
        encode(tokenizer, chat(("user", f"x{token}y"), ("assistant", "a")))


def test_short_contents_are_located_by_the_template_not_by_search(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """'a' and 'user' occur in the template text itself; spans come from the template pieces."""
    example = encode(tokenizer, chat(("user", "user"), ("assistant", "a")))
    assert [tokenizer.decode(run) for run in supervised_runs(example)] == ["a<|im_end|>"]


def test_encoder_rejects_a_tokenizer_without_qwen_tokens() -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0}, "a")))
    with pytest.raises(ValueError, match="not a Qwen3 tokenizer"):
        ChatEncoder(plain)


def test_load_examples_uses_the_same_formatting(tokenizer: PreTrainedTokenizerBase) -> None:
    path = SAMPLES / "train.jsonl"
    examples, _ = load_examples(path, DatasetSpec(train={"path": str(path)}), tokenizer)
    first = encode(tokenizer, chat(("user", SEED_INPUT), ("assistant", SEED_TARGET)))
    assert examples[0].input_ids == first.input_ids and examples[0].labels == first.labels
