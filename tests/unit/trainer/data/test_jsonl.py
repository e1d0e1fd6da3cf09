"""Reading and validating JSONL: every format parses, every bad line is named or counted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from kubetune_api.finetune import DatasetSpec
from kubetune_trainer.data import DataError, file_sha256, load_examples

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLES = Path(__file__).parents[4] / "examples" / "data"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def spec(path: Path, **kwargs: Any) -> DatasetSpec:
    return DatasetSpec(train={"path": str(path)}, **kwargs)


def write(tmp_path: Path, *lines: str, name: str = "train.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = json.dumps({"input": "User: hi\nAssistant:", "target": "Hello!"})


@pytest.mark.parametrize(
    ("fmt", "name", "rows"),
    [
        ("input-target", "train.jsonl", 287),
        ("messages", "messages.jsonl", 24),
        ("text", "text.jsonl", 23),
    ],
)
def test_each_format_parses(
    tokenizer: PreTrainedTokenizerBase, fmt: str, name: str, rows: int
) -> None:
    path = SAMPLES / name
    examples, stats = load_examples(path, spec(path, format=fmt), tokenizer, task="faq")
    assert stats.kept == stats.lines_read == rows
    assert len(examples) == stats.examples >= rows
    assert all(e.task == "faq" and len(e.labels) == len(e.input_ids) for e in examples)
    assert stats.sha256 == file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


BAD_LINES = [
    ('{"input": "a", "target": ', "invalid JSON: Expecting value at column 26"),
    ("[1, 2]", "expected a JSON object, got list ([1, 2])"),
    ('{"input": "a"}', 'missing field "target" (fields present: "input")'),
    ('{"input": "a", "target": 17}', 'field "target" must be a string, got int (17)'),
    ('{"input": null, "target": "b"}', 'field "input" must be a string, got null'),
    ('{"input": "a", "target": "<|im_end|>b"}', 'contains the control token "<|im_end|>"'),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_bad_line_fails_with_file_line_and_reason(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path, line: str, reason: str
) -> None:
    path = write(tmp_path, GOOD, "", line, GOOD)
    with pytest.raises(DataError) as caught:
        load_examples(path, spec(path), tokenizer)
    err = caught.value
    assert (err.path, err.line) == (str(path), 3)
    assert reason in err.reason
    assert str(err) == f"{path}:3: {err.reason}"


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_bad_line_is_skipped_and_counted(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path, line: str, reason: str
) -> None:
    path = write(tmp_path, GOOD, "", line)
    examples, stats = load_examples(path, spec(path, on_invalid_line="skip"), tokenizer)
    assert (stats.lines_read, stats.blank_lines, stats.invalid_lines, stats.kept) == (3, 1, 1, 1)
    assert len(examples) == 1 and examples[0].line == 1
    assert stats.skipped[0].startswith(f"{path}:3: ") and reason in stats.skipped[0]


BAD_MESSAGES = [
    ({"messages": []}, 'field "messages" must be a non-empty list, got list ([])'),
    ({"messages": "hi"}, 'field "messages" must be a non-empty list, got str ("hi")'),
    ({"chat": []}, 'missing field "messages"'),
    ({"messages": [{"role": "tool", "content": "x"}]}, 'messages[0].role must be one of "system"'),
    ({"messages": [{"role": "user"}]}, 'messages[0] is missing field "content"'),
    (
        {"messages": [{"role": "user", "content": 3}]},
        "messages[0].content must be a string, got int",
    ),
    ({"messages": ["hello"]}, 'messages[0] must be an object, got str ("hello")'),
    ({"messages": [{"role": "user", "content": "hi"}]}, 'no "assistant" message'),
    (
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "<think>x</think>a"},
            ]
        },
        "messages[1].content is changed by the chat template",
    ),
]


@pytest.mark.parametrize(("row", "reason"), BAD_MESSAGES)
def test_bad_messages_line(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path, row: dict[str, Any], reason: str
) -> None:
    good = json.dumps(
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    )
    path = write(tmp_path, good, json.dumps(row))
    with pytest.raises(DataError, match=r":2: ") as caught:
        load_examples(path, spec(path, format="messages"), tokenizer)
    assert reason in caught.value.reason
    _, stats = load_examples(path, spec(path, format="messages", on_invalid_line="skip"), tokenizer)
    assert (stats.invalid_lines, stats.kept) == (1, 1)


def test_bad_text_line(tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    path = write(tmp_path, '{"text": "fine"}', '{"text": ["not", "a", "string"]}')
    with pytest.raises(DataError, match=r':2: field "text" must be a string, got list'):
        load_examples(path, spec(path, format="text"), tokenizer)


def test_invalid_utf8_names_the_line(tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + b'{"input": "\xff", "target": "b"}\n')
    with pytest.raises(DataError, match=r":2: not valid UTF-8"):
        load_examples(path, spec(path), tokenizer)


def test_bom_crlf_and_missing_final_newline(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + GOOD.encode() + b"\r\n\r\n" + GOOD.replace("hi", "yo").encode()
    )
    examples, stats = load_examples(path, spec(path), tokenizer)
    assert (stats.lines_read, stats.blank_lines, stats.kept) == (3, 1, 2)
    assert [e.line for e in examples] == [1, 3]


def test_mixed_file_accounts_for_every_line(tokenizer: PreTrainedTokenizerBase) -> None:
    path = FIXTURES / "mixed_input_target.jsonl"
    with pytest.raises(DataError, match=r"mixed_input_target.jsonl:7: invalid JSON"):
        load_examples(path, spec(path), tokenizer)
    examples, stats = load_examples(path, spec(path, on_invalid_line="skip"), tokenizer)
    assert stats.lines_read == 12
    assert (stats.blank_lines, stats.invalid_lines, stats.duplicates, stats.low_quality) == (
        2,
        3,
        2,
        2,
    )
    assert stats.kept == 3 and stats.accounted() == stats.lines_read
    assert [e.line for e in examples] == [1, 3, 12]
    assert [s.split(": ", 1)[0].rsplit(":", 1)[1] for s in stats.skipped] == ["7", "9", "10"]


def test_dedupe_off_keeps_duplicates(tokenizer: PreTrainedTokenizerBase) -> None:
    path = FIXTURES / "mixed_input_target.jsonl"
    _, stats = load_examples(path, spec(path, on_invalid_line="skip", dedupe=False), tokenizer)
    assert (stats.duplicates, stats.kept) == (0, 5)


def test_missing_and_empty_files(tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope.jsonl:0: file not found"):
        load_examples(tmp_path / "nope.jsonl", spec(tmp_path / "nope.jsonl"), tokenizer)
    path = write(tmp_path, "", '{"input": "x", "target": ""}')
    with pytest.raises(DataError, match=r":0: no usable rows \(2 lines: 0 kept, 1 blank"):
        load_examples(path, spec(path), tokenizer)


def test_progress_bar_reads_the_same(tokenizer: PreTrainedTokenizerBase) -> None:
    path = SAMPLES / "eval.jsonl"
    plain, _ = load_examples(path, spec(path), tokenizer)
    shown, _ = load_examples(path, spec(path), tokenizer, progress=True)
    assert plain == shown
