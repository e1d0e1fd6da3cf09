"""Row filters, length control and the counters that account for every line of a data file.

Called by the loader (`kubetune_trainer.data.loader`): `low_quality_reason` and `Deduper` work on
validated rows before tokenization; `truncate_targets`, `truncate_input` and `split_text` work on
the role-tagged tokens of `kubetune_trainer.data.formatting`. `DataStats` is the summary the
trainer writes into the run summary and the job status.

Length rules (documented in the dataset schema and here):

- a prompt over `maxInputTokens` loses tokens from the LEFT, so the end of the prompt survives;
  the template's opening (`<|im_start|>user\\n`, or `<|im_start|>system\\n` when a system turn
  leads) and the generation prompt before the answer (`<|im_end|>\\n<|im_start|>assistant\\n
  <think>\\n\\n</think>\\n\\n`) are kept, unless they alone exceed the limit. In a multi-turn
  row the earliest turns go first, their answers with them.
- an answer over `maxTargetTokens` loses tokens from the RIGHT, but its closing `<|im_end|>` is
  kept as the last supervised token: the model still learns to stop, at the cap, instead of
  learning answers that never end. The limit counts the `<|im_end|>`.
- a `text` row longer than `maxInputTokens + maxTargetTokens` (the longest chat sequence) is
  split into consecutive chunks of that size, none dropped; the extra chunks are counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from kubetune_trainer.data.formatting import MASKED_ROLES, Encoded, Example, Role
from kubetune_trainer.data.jsonl import Row

MAX_SKIP_MESSAGES = 5


@dataclass
class DataStats:
    """What happened to each line of one file: lines_read = blank + invalid + duplicates +
    low_quality + kept. Token counts are over the kept examples after truncation."""

    path: str = ""
    format: str = "input-target"
    sha256: str = ""
    lines_read: int = 0
    blank_lines: int = 0
    invalid_lines: int = 0
    duplicates: int = 0
    low_quality: int = 0
    truncated_inputs: int = 0
    truncated_targets: int = 0
    split_texts: int = 0
    kept: int = 0
    examples: int = 0
    total_tokens: int = 0
    supervised_tokens: int = 0
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict for the run summary."""
        return asdict(self)

    def add_skip(self, message: str) -> None:
        """Count one skipped invalid line; remember the first few messages for the summary."""
        self.invalid_lines += 1
        if len(self.skipped) < MAX_SKIP_MESSAGES:
            self.skipped.append(message)

    def add_example(self, example: Example) -> None:
        self.examples += 1
        self.total_tokens += len(example.input_ids)
        self.supervised_tokens += sum(1 for label in example.labels if label != -100)

    def accounted(self) -> int:
        """Lines explained by the counters; equals `lines_read` after a load."""
        dropped = self.blank_lines + self.invalid_lines + self.duplicates + self.low_quality
        return dropped + self.kept

    def summary(self) -> str:
        """One line for logs and error messages."""
        return (
            f"{self.lines_read} lines: {self.kept} kept, {self.blank_lines} blank, "
            f"{self.invalid_lines} invalid, {self.duplicates} duplicate, "
            f"{self.low_quality} low quality; truncated {self.truncated_inputs} inputs, "
            f"{self.truncated_targets} targets"
        )


def low_quality_reason(row: Row) -> str | None:
    """Why a row teaches nothing useful (empty answer, answer equal to its prompt), else None."""
    if row.text is not None:
        return None if row.text.strip() else "empty text"
    previous = ""
    for turn in row.turns:
        content = turn.content.strip()
        if turn.role == "assistant":
            if not content:
                return "empty target"
            if content == previous:
                return "target equals input"
        previous = content
    return None


class Deduper:
    """Remembers a digest of every row seen; `seen(row)` is True from the second copy on.

    Rows are compared by content (roles and texts, or the text), not by raw line bytes, so two
    lines that differ only in JSON spacing or key order are duplicates too.
    """

    def __init__(self) -> None:
        self._digests: set[bytes] = set()

    def seen(self, row: Row) -> bool:
        digest = hashlib.blake2b(row.key().encode("utf-8"), digest_size=16).digest()
        if digest in self._digests:
            return True
        self._digests.add(digest)
        return False


def truncate_targets(enc: Encoded, max_target_tokens: int) -> bool:
    """Cut each answer to `max_target_tokens` (its `<|im_end|>` included) from the right."""
    keep = [True] * len(enc.ids)
    run: list[int] = []  # indices of the current answer's content tokens
    for i, role in enumerate(enc.roles):
        if role == "target":
            run.append(i)
        elif role == "end":
            for j in run[max(max_target_tokens - 1, 0) :]:
                keep[j] = False
            run = []
    return _apply(enc, keep) if not all(keep) else False


def truncate_input(enc: Encoded, max_input_tokens: int) -> bool:
    """Drop masked tokens from the left until at most `max_input_tokens` remain (see module)."""
    excess = enc.count(MASKED_ROLES) - max_input_tokens
    if excess <= 0:
        return False
    final = _final_answer_start(enc.roles)
    body = [i for i in range(final) if enc.roles[i] not in ("head", "tail")]
    heads = [i for i in range(final) if enc.roles[i] == "head"]
    tails = [i for i in range(final) if enc.roles[i] == "tail"]
    keep = [True] * len(enc.ids)
    for i in body + heads + tails:
        if excess <= 0:
            break
        keep[i] = False
        if enc.roles[i] in MASKED_ROLES:
            excess -= 1
    return _apply(enc, keep)


def split_text(enc: Encoded, max_tokens: int) -> list[Encoded]:
    """Consecutive chunks of at most `max_tokens` tokens (for `text` rows)."""
    return [
        Encoded(enc.ids[i : i + max_tokens], enc.roles[i : i + max_tokens])
        for i in range(0, len(enc.ids), max_tokens)
    ]


def _final_answer_start(roles: list[Role]) -> int:
    """Index of the first token of the last supervised run (the answer that must survive)."""
    i = len(roles)
    while i > 0 and roles[i - 1] not in MASKED_ROLES:
        i -= 1
    return i


def _apply(enc: Encoded, keep: list[bool]) -> bool:
    enc.ids = [t for t, k in zip(enc.ids, keep, strict=True) if k]
    enc.roles = [r for r, k in zip(enc.roles, keep, strict=True) if k]
    return True
