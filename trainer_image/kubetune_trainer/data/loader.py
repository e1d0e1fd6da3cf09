"""`load_examples`: one JSONL file in, tokenized and masked examples plus their counters out.

Called by the training loop for the train and eval files (and once per task of a mixture).
Each line goes through: blank? -> parse and validate (`jsonl`) -> low quality? -> duplicate?
-> tokenize and mask (`formatting`) -> truncate (`filters`). A line that fails validation either
stops the run with a `DataError` naming file, line and reason (`onInvalidLine: fail`), or is
skipped and counted (`skip`). Every line ends up in exactly one counter of `DataStats`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_trainer.data.filters import (
    DataStats,
    Deduper,
    low_quality_reason,
    split_text,
    truncate_input,
    truncate_targets,
)
from kubetune_trainer.data.formatting import ChatEncoder, Encoded, Example
from kubetune_trainer.data.jsonl import (
    DataError,
    RawLine,
    RowError,
    is_blank,
    parse_row,
    read_lines,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from kubetune_api.finetune import DatasetSpec


def load_examples(
    path: str | Path,
    spec: DatasetSpec,
    tokenizer: PreTrainedTokenizerBase,
    *,
    task: str | None = None,
    progress: bool = False,
) -> tuple[list[Example], DataStats]:
    """Read, validate, filter, format and truncate one file; raise `DataError` when unusable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), 0, "file not found")
    stats = DataStats(path=str(path), format=spec.format)
    loader = _FileLoader(spec, ChatEncoder(tokenizer), stats, task)
    digest = hashlib.sha256()
    for raw in _with_progress(read_lines(path, digest), path, progress):
        loader.add(raw)
    stats.sha256 = digest.hexdigest()
    if not loader.examples:
        raise DataError(str(path), 0, f"no usable rows ({stats.summary()})")
    return loader.examples, stats


class _FileLoader:
    """The per-file state of `load_examples`: counters, the dedupe set, the examples so far."""

    def __init__(
        self, spec: DatasetSpec, encoder: ChatEncoder, stats: DataStats, task: str | None
    ) -> None:
        self.spec = spec
        self.encoder = encoder
        self.stats = stats
        self.task = task
        self.deduper = Deduper() if spec.dedupe else None
        self.examples: list[Example] = []

    def add(self, raw: RawLine) -> None:
        """Account for one line: blank, invalid (fail or skip), dropped, or kept."""
        self.stats.lines_read += 1
        if is_blank(raw):
            self.stats.blank_lines += 1
            return
        try:
            self._add_row(raw)
        except RowError as err:
            if self.spec.on_invalid_line == "fail":
                raise DataError(self.stats.path, raw.number, err.reason) from None
            self.stats.add_skip(f"{self.stats.path}:{raw.number}: {err.reason}")

    def _add_row(self, raw: RawLine) -> None:
        row = parse_row(raw, self.spec.format)
        if low_quality_reason(row) is not None:
            self.stats.low_quality += 1
            return
        if self.deduper is not None and self.deduper.seen(row):
            self.stats.duplicates += 1
            return
        for enc in self._fit(self.encoder.encode(row)):
            example = enc.to_example(raw.number, self.task)
            example.path = self.stats.path
            self.examples.append(example)
            self.stats.add_example(example)
        self.stats.kept += 1

    def _fit(self, enc: Encoded) -> list[Encoded]:
        """Apply the length rules of `filters` and count what they changed."""
        spec = self.spec
        if spec.format == "text":
            chunks = split_text(enc, spec.max_input_tokens + spec.max_target_tokens)
            self.stats.split_texts += len(chunks) - 1
            return chunks
        self.stats.truncated_targets += truncate_targets(enc, spec.max_target_tokens)
        self.stats.truncated_inputs += truncate_input(enc, spec.max_input_tokens)
        return [enc]


def _with_progress(lines: Iterator[RawLine], path: Path, enabled: bool) -> Iterator[RawLine]:
    """Pass lines through, advancing a tqdm bar by bytes when `enabled`."""
    if not enabled:
        yield from lines
        return
    from tqdm import tqdm

    bar: Any = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name)
    with bar:
        for raw in lines:
            bar.update(len(raw.data) + 1)
            yield raw
