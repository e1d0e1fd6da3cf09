"""Length control, quality filters, dedupe and the counters of `DataStats`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from kubetune_api.finetune import DatasetSpec
from kubetune_trainer.data import IGNORE_INDEX, DataStats, Example, load_examples

GENERATION_TAIL = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
WORDS = " ".join(f"w{i}" for i in range(400))  # 800+ tokens, each number distinct


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def load(
    tok: PreTrainedTokenizerBase, tmp_path: Path, rows: list[dict[str, Any]], **kwargs: Any
) -> tuple[list[Example], DataStats]:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return load_examples(path, DatasetSpec(train={"path": str(path)}, **kwargs), tok)


def split(example: Example) -> tuple[list[int], list[int]]:
    """(prompt ids, supervised ids) of a single-answer example."""
    first = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    return example.input_ids[:first], example.input_ids[first:]


def test_long_input_is_cut_from_the_left_keeping_header_and_generation_prompt(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    rows = [{"input": WORDS, "target": "ok"}, {"input": "short", "target": "fine"}]
    examples, stats = load(tokenizer, tmp_path, rows, max_input_tokens=40)
    prompt, answer = split(examples[0])
    text = tokenizer.decode(prompt)
    assert len(prompt) == 40
    assert text.startswith("<|im_start|>user\n")
    assert text.endswith("w399" + GENERATION_TAIL)  # the end of the input survives
    assert "w0 " not in text
    assert tokenizer.decode(answer) == "ok<|im_end|>"
    assert (stats.truncated_inputs, stats.truncated_targets, stats.kept) == (1, 0, 2)


def test_long_target_is_cut_from_the_right_keeping_im_end(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    examples, stats = load(
        tokenizer, tmp_path, [{"input": "q", "target": WORDS}], max_target_tokens=10
    )
    _, answer = split(examples[0])
    full = tokenizer(WORDS, add_special_tokens=False)["input_ids"]
    assert len(answer) == 10
    assert answer[:9] == full[:9]
    assert answer[-1] == examples[0].labels[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert (stats.truncated_inputs, stats.truncated_targets) == (0, 1)


def test_both_limits_at_once_are_both_counted(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    examples, stats = load(
        tokenizer,
        tmp_path,
        [{"input": WORDS, "target": WORDS.upper()}],
        max_input_tokens=30,
        max_target_tokens=20,
    )
    prompt, answer = split(examples[0])
    assert (len(prompt), len(answer)) == (30, 20)
    assert (stats.truncated_inputs, stats.truncated_targets) == (1, 1)
    assert stats.total_tokens == 50 and stats.supervised_tokens == 20


def test_limit_below_the_template_keeps_the_generation_prompt_tail(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    examples, _ = load(tokenizer, tmp_path, [{"input": WORDS, "target": "ok"}], max_input_tokens=5)
    prompt, _ = split(examples[0])
    tail = tokenizer(GENERATION_TAIL, add_special_tokens=False)["input_ids"]
    assert prompt == tail[-5:]


def test_multi_turn_truncation_drops_the_earliest_turns_first(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    messages = [
        {"role": "user", "content": WORDS},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "second answer"},
    ]
    examples, stats = load(
        tokenizer, tmp_path, [{"messages": messages}], format="messages", max_input_tokens=30
    )
    text = tokenizer.decode(examples[0].input_ids)
    masked = sum(1 for label in examples[0].labels if label == IGNORE_INDEX)
    assert text.startswith("<|im_start|>user\n")
    assert text.endswith(
        "first answer<|im_end|>\n<|im_start|>user\nsecond question"
        + GENERATION_TAIL
        + "second answer<|im_end|>"
    )
    assert masked == 30 and stats.truncated_inputs == 1


def test_long_text_rows_are_split_not_dropped(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    examples, stats = load(
        tokenizer,
        tmp_path,
        [{"text": WORDS}, {"text": "short"}],
        format="text",
        max_input_tokens=64,
        max_target_tokens=36,
    )
    total = len(tokenizer(WORDS, add_special_tokens=False)["input_ids"]) + 1
    long_chunks = [e for e in examples if e.line == 1]
    assert all(len(e.input_ids) <= 100 for e in examples)
    assert sum(len(e.input_ids) for e in long_chunks) == total
    assert stats.split_texts == len(long_chunks) - 1 > 0
    assert (stats.kept, stats.examples) == (2, len(examples))
    assert long_chunks[-1].input_ids[-1] == tokenizer.convert_tokens_to_ids("<|endoftext|>")


@pytest.mark.parametrize(
    "row",
    [
        {"input": "q", "target": ""},
        {"input": "q", "target": " \n "},
        {"input": "same text", "target": " same text\n"},
    ],
)
def test_low_quality_rows_are_dropped_and_counted(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path, row: dict[str, str]
) -> None:
    _, stats = load(tokenizer, tmp_path, [{"input": "q", "target": "a"}, row])
    assert (stats.low_quality, stats.kept, stats.accounted()) == (1, 1, 2)


def test_empty_answer_in_a_conversation_is_low_quality(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    good = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    empty = [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}, *good]
    _, stats = load(
        tokenizer, tmp_path, [{"messages": good}, {"messages": empty}], format="messages"
    )
    assert (stats.low_quality, stats.kept) == (1, 1)


def test_duplicates_compare_content_not_json_spelling(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    rows = [
        {"input": "q", "target": "a"},
        {"target": "a", "input": "q", "id": 2},  # same content, other key order, extra key
        {"input": "q", "target": "b"},
    ]
    _, stats = load(tokenizer, tmp_path, rows)
    assert (stats.duplicates, stats.kept) == (1, 2)


def test_stats_to_dict_is_json_and_complete(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    _, stats = load(tokenizer, tmp_path, [{"input": "q", "target": "a"}])
    summary = json.loads(json.dumps(stats.to_dict()))
    for key in (
        "lines_read",
        "blank_lines",
        "invalid_lines",
        "duplicates",
        "low_quality",
        "truncated_inputs",
        "truncated_targets",
        "kept",
        "total_tokens",
        "supervised_tokens",
        "sha256",
    ):
        assert key in summary
    assert summary["supervised_tokens"] == 2  # "a" and <|im_end|>
