"""Reading JSONL training files and validating each line against `DatasetSpec.format`.

`read_lines` yields the raw lines of a file (and hashes its bytes on the way); `parse_row` turns
one line into a `Row` or raises `RowError` with a one-line reason that quotes the bad value. The
loader (`kubetune_trainer.data.loader`) decides whether a `RowError` fails the run (as a
`DataError` naming file and line) or is skipped and counted. This module knows nothing about
tokenizers.

Accepted line shapes:

- `input-target`: `{"input": str, "target": str}`, trained as one user turn and one answer;
- `messages`: `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`;
- `text`: `{"text": str}` for continued pre-training.

Other keys on a line (an `id`, a `source`) are ignored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

DataFormat = Literal["input-target", "messages", "text"]
ROLES = ("system", "user", "assistant")
_VALUE_PREVIEW = 40


class DataError(ValueError):
    """A training file cannot be used; `str(err)` is `"{path}:{line}: {reason}"`.

    `line` is 1-based; 0 means the file as a whole (missing, or nothing usable in it).
    """

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


class RowError(ValueError):
    """One line is invalid; `reason` says why, without the file and line (the loader adds them)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Turn:
    """One chat message."""

    role: str
    content: str


@dataclass(frozen=True)
class Row:
    """One valid line: a conversation (`input-target`, `messages`) or a plain text (`text`)."""

    line: int
    turns: tuple[Turn, ...] = ()
    text: str | None = None

    def key(self) -> str:
        """A canonical form of the row's content: equal keys mean exact duplicates."""
        if self.text is not None:
            return json.dumps(self.text, ensure_ascii=False)
        return json.dumps([[t.role, t.content] for t in self.turns], ensure_ascii=False)


@dataclass(frozen=True)
class RawLine:
    """One physical line of a file, undecoded, with its 1-based number."""

    number: int
    data: bytes


def read_lines(path: Path, digest: Any | None = None) -> Iterator[RawLine]:
    """Yield the file's lines (without line endings); feed every byte into `digest` if given."""
    with path.open("rb") as fh:
        for number, data in enumerate(fh, start=1):
            if digest is not None:
                digest.update(data)
            yield RawLine(number, data.rstrip(b"\r\n"))


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, hex: the data hash the run summary records."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_blank(raw: RawLine) -> bool:
    """True for an empty or whitespace-only line (ignored, but counted)."""
    return not raw.data.strip()


def parse_row(raw: RawLine, fmt: DataFormat) -> Row:
    """Decode and validate one non-blank line; raise `RowError` saying what is wrong."""
    obj = _decode(raw)
    if fmt == "input-target":
        user = _string_field(obj, "input")
        target = _string_field(obj, "target")
        return Row(raw.number, turns=(Turn("user", user), Turn("assistant", target)))
    if fmt == "messages":
        return Row(raw.number, turns=_messages(obj))
    if fmt == "text":
        return Row(raw.number, text=_string_field(obj, "text"))
    raise ValueError(f"format must be one of input-target, messages, text, got {fmt!r}")


def _decode(raw: RawLine) -> dict[str, Any]:
    data = raw.data.removeprefix(b"\xef\xbb\xbf") if raw.number == 1 else raw.data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RowError(
            f"not valid UTF-8 (byte {err.start}: {data[err.start : err.end]!r})"
        ) from err
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise RowError(
            f"invalid JSON: {err.msg} at column {err.colno} in {_preview(text)}"
        ) from err
    if not isinstance(obj, dict):
        raise RowError(f"expected a JSON object, got {describe(obj)}")
    return obj


def _string_field(obj: dict[str, Any], name: str) -> str:
    if name not in obj:
        present = ", ".join(f'"{k}"' for k in list(obj)[:5]) or "none"
        raise RowError(f'missing field "{name}" (fields present: {present})')
    value = obj[name]
    if not isinstance(value, str):
        raise RowError(f'field "{name}" must be a string, got {describe(value)}')
    return value


def _messages(obj: dict[str, Any]) -> tuple[Turn, ...]:
    if "messages" not in obj:
        raise RowError('missing field "messages"')
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise RowError(f'field "messages" must be a non-empty list, got {describe(messages)}')
    turns = tuple(_turn(i, m) for i, m in enumerate(messages))
    if not any(t.role == "assistant" for t in turns):
        raise RowError('field "messages" has no "assistant" message: nothing to learn')
    return turns


def _turn(index: int, message: Any) -> Turn:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise RowError(f"{where} must be an object, got {describe(message)}")
    for name in ("role", "content"):
        if name not in message:
            raise RowError(f'{where} is missing field "{name}"')
    role, content = message["role"], message["content"]
    if role not in ROLES:
        allowed = ", ".join(f'"{r}"' for r in ROLES)
        raise RowError(f"{where}.role must be one of {allowed}, got {_preview(role)}")
    if not isinstance(content, str):
        raise RowError(f"{where}.content must be a string, got {describe(content)}")
    return Turn(role, content)


def describe(value: Any) -> str:
    """A value's JSON type and a short preview, for error messages: `int (17)`, `null`."""
    if value is None:
        return "null"
    kind = {dict: "object", list: "list", bool: "bool"}.get(type(value), type(value).__name__)
    return f"{kind} ({_preview(value)})"


def _preview(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _VALUE_PREVIEW else text[: _VALUE_PREVIEW - 3] + "..."
