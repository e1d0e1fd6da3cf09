"""Synonym replacement from a user-supplied dictionary, for Chinese and English text.

`load_synonyms` reads the dictionary (JSON `{word: [synonym, ...]}` or TSV `word<TAB>syn1,syn2`);
`SynonymTable.replace` rewrites one string. Matching is forward maximum matching restricted to
dictionary words: at each position the longest dictionary entry that starts there wins, and the
scan jumps past it; where nothing matches it moves on one character. That one rule serves both
scripts:

- Chinese has no spaces, so an entry may start and end anywhere ("信用卡" is found inside
  "我的信用卡丢了", and it wins over the shorter entry "信用");
- an entry that starts or ends with a Latin letter or digit must sit on a word boundary on that
  side ("card" never matches inside "discard"), is matched case-insensitively, and its
  replacement takes the original's case (`Card` -> `Bill`, `CARD` -> `BILL`). Multi-word
  entries ("credit limit") work the same way.

Each matched word is replaced with probability `p`, its synonym drawn uniformly, both from the
`random.Random` the caller passes (so a seeded caller gets the same output every time).
Called by `kubetune_trainer.augment.augment_rows`; knows nothing about rows or files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from kubetune_api import ConfigError

FIELD = "dataset.augmentation.synonyms.dictionary"


class DictionaryError(ConfigError):
    """The synonym dictionary cannot be used; the message names the file, line and value."""

    def __init__(self, reason: str) -> None:
        super().__init__([f"{FIELD}: {reason}"])


def _is_word_char(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


class SynonymTable:
    """Lower-cased dictionary words -> their synonyms (the word itself excluded)."""

    def __init__(self, entries: dict[str, tuple[str, ...]]) -> None:
        self.entries = entries
        self._lengths = sorted({len(k) for k in entries}, reverse=True)

    def __len__(self) -> int:
        return len(self.entries)

    def matches(self, text: str) -> list[tuple[int, int]]:
        """(start, end) spans of dictionary words, found by forward maximum matching."""
        spans: list[tuple[int, int]] = []
        i = 0
        while i < len(text):
            end = self._longest_at(text, i)
            if end is None:
                i += 1
                continue
            spans.append((i, end))
            i = end
        return spans

    def _longest_at(self, text: str, start: int) -> int | None:
        if _is_word_char(text[start]) and start > 0 and _is_word_char(text[start - 1]):
            return None  # inside a Latin word: entries only start at its boundary
        for length in self._lengths:
            end = start + length
            if end > len(text) or text[start:end].lower() not in self.entries:
                continue
            if _is_word_char(text[end - 1]) and end < len(text) and _is_word_char(text[end]):
                continue  # would end inside a Latin word
            return end
        return None

    def replace(self, text: str, probability: float, rng: random.Random) -> tuple[str, int]:
        """`text` with each matched word swapped for a synonym with `probability`; and the count."""
        parts: list[str] = []
        last = replaced = 0
        for start, end in self.matches(text):
            if rng.random() >= probability:
                continue
            word = text[start:end]
            parts += [text[last:start], match_case(word, rng.choice(self.entries[word.lower()]))]
            last, replaced = end, replaced + 1
        parts.append(text[last:])
        return "".join(parts), replaced


def match_case(original: str, synonym: str) -> str:
    """The synonym in the original's case: UPPER, Title Words, Capitalised, or as spelt."""
    if not any(c.isascii() and c.isalpha() for c in original):
        return synonym
    if original.isupper() and len(original) > 1:
        return synonym.upper()
    if " " in original.strip() and original.istitle():
        return " ".join(w[:1].upper() + w[1:] for w in synonym.split(" "))
    if original[0].isupper():
        return synonym[:1].upper() + synonym[1:]
    return synonym


def load_synonyms(path: str | Path) -> SynonymTable:
    """Read a JSON (`.json`) or TSV (anything else) dictionary; raise DictionaryError if unusable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DictionaryError(f"cannot read {path}: {err.strerror}") from err
    pairs = _parse_json(path, text) if path.suffix.lower() == ".json" else _parse_tsv(path, text)
    entries: dict[str, tuple[str, ...]] = {}
    for word, synonyms in pairs:
        key = word.strip().lower()
        found = [s.strip() for s in synonyms if s.strip() and s.strip().lower() != key]
        if key and found:
            entries[key] = tuple(dict.fromkeys(entries.get(key, ()) + tuple(found)))
    if not entries:
        raise DictionaryError(f"{path}: no word with at least one synonym")
    return SynonymTable(entries)


def _parse_json(path: Path, text: str) -> list[tuple[str, list[str]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DictionaryError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err
    if not isinstance(data, dict):
        raise DictionaryError(f"{path}: expected an object {{word: [synonyms]}}, got {type(data)}")
    pairs: list[tuple[str, list[str]]] = []
    for word, synonyms in data.items():
        if not isinstance(synonyms, list) or not all(isinstance(s, str) for s in synonyms):
            raise DictionaryError(
                f"{path}: synonyms of {word!r} must be a list of strings, got {synonyms!r}"
            )
        pairs.append((word, synonyms))
    return pairs


def _parse_tsv(path: Path, text: str) -> list[tuple[str, list[str]]]:
    pairs: list[tuple[str, list[str]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, tab, rest = line.partition("\t")
        if not tab:
            raise DictionaryError(
                f"{path}:{number}: expected word<TAB>syn1,syn2, got {line[:40]!r}"
            )
        synonyms = [s for chunk in rest.split("\t") for s in chunk.replace("，", ",").split(",")]
        pairs.append((word, synonyms))
    return pairs
