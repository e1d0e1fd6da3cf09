"""Which rows and texts are augmented, within what budget, and what gets counted.

Rows are the dicts read from a JSONL training file. The texts rewritten are the prompts:
`input` of an input-target row, the `user` turns of a messages row, and the whole `text` of a
text row (continued pre-training has nothing else). Answers are left exactly as written: they
carry facts (amounts, dates, product names) that a synonym swap or a round trip through another
language can corrupt, while a paraphrased question teaches robustness to phrasing.

Budget: `maxRows` rows are added at most. With both methods on, synonyms may use half of it and
back-translation the rest (including what synonyms left unused). Each method walks the rows in
its own seeded random order, so a capped run samples the whole file rather than its head. A
new row is a deep copy of its source with the rewritten texts, `"_augmented": "synonyms" |
"back-translation"` and `"_augmented_from": <index of the source row>`; a rewrite that changes
nothing is not added (it would be a duplicate). Rows that are not valid for the format are
skipped here: the loader reports them with file and line.
"""

from __future__ import annotations

import copy
import json
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from kubetune_api.extras import AugmentationSpec
from kubetune_trainer.augment.synonyms import SynonymTable, load_synonyms
from kubetune_trainer.augment.translate import BackTranslator, TranslationError

log = logging.getLogger(__name__)

DataFormat = Literal["input-target", "messages", "text"]
Method = Literal["synonyms", "back-translation"]
AUGMENTED_KEY = "_augmented"
AUGMENTED_FROM_KEY = "_augmented_from"
MAX_CONSECUTIVE_FAILURES = 8  # then the endpoint is taken to be down: stop asking it
MAX_REASONS = 5
TextPath = tuple[
    str | int, ...
]  # where a text sits in a row: ("input",), ("messages", 0, "content")


@dataclass
class AugmentStats:
    """What augmentation did, for the run summary (`to_dict`)."""

    source_rows: int = 0
    eligible_rows: int = 0
    max_rows: int = 0
    synonym_rows: int = 0
    synonym_replacements: int = 0
    back_translation_rows: int = 0
    back_translation_failures: int = 0
    back_translation_stopped: bool = False  # gave up after consecutive failures
    unchanged_rows: int = 0
    failure_reasons: list[str] = field(default_factory=list)

    @property
    def added_rows(self) -> int:
        return self.synonym_rows + self.back_translation_rows

    def note_failure(self, reason: str) -> None:
        self.back_translation_failures += 1
        if len(self.failure_reasons) < MAX_REASONS:
            self.failure_reasons.append(reason)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "added_rows": self.added_rows}


def text_paths(row: Mapping[str, Any], fmt: DataFormat) -> list[TextPath]:
    """Where the augmentable texts of `row` are; empty when the row is not valid for `fmt`."""
    if fmt == "input-target":
        return [("input",)] if _is_text(row.get("input")) and _is_text(row.get("target")) else []
    if fmt == "text":
        return [("text",)] if _is_text(row.get("text")) else []
    messages = row.get("messages")
    if not isinstance(messages, list):
        return []
    return [
        ("messages", i, "content")
        for i, m in enumerate(messages)
        if isinstance(m, dict) and m.get("role") == "user" and _is_text(m.get("content"))
    ]


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def get_text(row: Mapping[str, Any], path: TextPath) -> str:
    node: Any = row
    for key in path:
        node = node[key]
    return str(node)


def with_texts(
    row: Mapping[str, Any], texts: dict[TextPath, str], method: Method, index: int
) -> dict[str, Any]:
    """A deep copy of `row` with `texts` put in place, marked as augmented from row `index`."""
    new = copy.deepcopy(dict(row))
    for path, text in texts.items():
        node: Any = new
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = text
    new[AUGMENTED_KEY] = method
    new[AUGMENTED_FROM_KEY] = index
    return new


def augment_rows(
    rows: Sequence[Mapping[str, Any]],
    spec: AugmentationSpec,
    *,
    fmt: DataFormat,
    client: httpx.Client | None = None,
) -> tuple[list[dict[str, Any]], AugmentStats]:
    """New rows derived from `rows` (never changed in place) and the counts of what happened.

    `client` replaces the back-translation HTTP client (tests); by default one is made with
    the spec's timeout and bearer token.
    """
    eligible = [(i, paths) for i, row in enumerate(rows) if (paths := text_paths(row, fmt))]
    stats = AugmentStats(len(rows), len(eligible), spec.max_rows)
    added: list[dict[str, Any]] = []
    if spec.max_rows == 0 or not eligible:
        return added, stats
    if spec.synonyms is not None:
        share = spec.max_rows // 2 if spec.back_translation is not None else spec.max_rows
        table = load_synonyms(spec.synonyms.dictionary)
        added += _synonym_rows(rows, eligible, table, spec, share, stats)
    if spec.back_translation is not None:
        with BackTranslator(spec.back_translation, client=client) as translator:
            budget = spec.max_rows - len(added)
            added += _back_translated_rows(rows, eligible, translator, spec.seed, budget, stats)
    log.info("augmentation added %d rows: %s", len(added), stats.to_dict())
    return added, stats


def _order(eligible: list[tuple[int, list[TextPath]]], seed: int, method: Method) -> list[int]:
    """Positions into `eligible`, shuffled by a seed of their own per method."""
    order = list(range(len(eligible)))
    random.Random(f"{seed}:{method}").shuffle(order)
    return order


def _synonym_rows(
    rows: Sequence[Mapping[str, Any]],
    eligible: list[tuple[int, list[TextPath]]],
    table: SynonymTable,
    spec: AugmentationSpec,
    budget: int,
    stats: AugmentStats,
) -> list[dict[str, Any]]:
    assert spec.synonyms is not None
    out: list[dict[str, Any]] = []
    for pos in _order(eligible, spec.seed, "synonyms"):
        if len(out) >= budget:
            break
        index, paths = eligible[pos]
        rng = random.Random(f"{spec.seed}:synonyms:{index}")
        texts, count = {}, 0
        for path in paths:
            texts[path], n = table.replace(
                get_text(rows[index], path), spec.synonyms.probability, rng
            )
            count += n
        if count == 0:
            stats.unchanged_rows += 1
            continue
        out.append(with_texts(rows[index], texts, "synonyms", index))
        stats.synonym_replacements += count
    stats.synonym_rows = len(out)
    return out


def _back_translated_rows(
    rows: Sequence[Mapping[str, Any]],
    eligible: list[tuple[int, list[TextPath]]],
    translator: BackTranslator,
    seed: int,
    budget: int,
    stats: AugmentStats,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    pending = iter(_order(eligible, seed, "back-translation"))
    streak = 0
    while len(out) < budget and streak < MAX_CONSECUTIVE_FAILURES:
        size = min(budget - len(out), translator.workers)
        batch = [eligible[pos] for pos in _take(pending, size)]
        if not batch:
            break
        for (index, paths), result in zip(
            batch, _paraphrase_rows(rows, batch, translator), strict=True
        ):
            streak = streak + 1 if isinstance(result, TranslationError) else 0
            if isinstance(result, TranslationError):
                stats.note_failure(str(result))
            elif all(result[p] == get_text(rows[index], p) for p in paths):
                stats.unchanged_rows += 1
            else:
                out.append(with_texts(rows[index], result, "back-translation", index))
    stats.back_translation_stopped = streak >= MAX_CONSECUTIVE_FAILURES
    if stats.back_translation_stopped:
        log.warning("back-translation stopped after %d failures in a row", streak)
    stats.back_translation_rows = len(out)
    return out


def _take(it: Iterator[int], n: int) -> list[int]:
    return [pos for _, pos in zip(range(n), it, strict=False)]


def _paraphrase_rows(
    rows: Sequence[Mapping[str, Any]],
    batch: list[tuple[int, list[TextPath]]],
    translator: BackTranslator,
) -> list[dict[TextPath, str] | TranslationError]:
    """Each row's paraphrased texts, or the first error among them."""
    flat = [(k, p) for k, (index, paths) in enumerate(batch) for p in paths]
    results = translator.paraphrase_many([get_text(rows[batch[k][0]], p) for k, p in flat])
    per_row: list[dict[TextPath, str] | TranslationError] = [{} for _ in batch]
    for (k, path), result in zip(flat, results, strict=True):
        current = per_row[k]
        if isinstance(current, TranslationError):
            continue
        per_row[k] = result if isinstance(result, TranslationError) else {**current, path: result}
    return per_row


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file; blank and invalid lines are left to the loader."""
    rows: list[dict[str, Any]] = []
    with Path(path).open(encoding="utf-8-sig") as fh:
        for line in fh:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                rows.append(obj)
    return rows


def augment_file(
    train_path: str | Path,
    spec: AugmentationSpec,
    *,
    fmt: DataFormat,
    out_path: str | Path,
    client: httpx.Client | None = None,
) -> AugmentStats:
    """Augment a JSONL training file; write only the new rows, as JSONL, to `out_path`."""
    new_rows, stats = augment_rows(read_rows(train_path), spec, fmt=fmt, client=client)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for row in new_rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return stats
