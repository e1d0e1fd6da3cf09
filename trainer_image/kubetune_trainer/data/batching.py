"""Dynamic batching: which examples share a micro-batch (`plan_batches`) and how they become
tensors (`collate`).

Called by the training loop once per epoch (`plan_batches`, pure and deterministic given seed and
epoch) and once per micro-batch (`collate`). Three modes, `TrainingSpec.dynamicBatching`:

- `none`: shuffled, fixed `micro_batch_size`, right-padded to the longest row of each batch.
- `length-grouped`: as transformers' `LengthGroupedSampler`: shuffle, sort by length inside
  mega-chunks of 50 micro-batches, cut into micro-batches, shuffle those, and put the one holding
  the longest example first so an out-of-memory error shows on the first step, not hours in.
- `packing`: best-fit-decreasing bin packing (after a shuffle, which breaks ties) into bins of at
  most `max_tokens` tokens; each bin becomes ONE padding-free row `[1, sum(len)]` whose
  `position_ids` restart at 0 for every example, with no attention mask, the way transformers'
  `DataCollatorWithFlattening` does it. Transformers 5 turns restarting `position_ids` into a
  block-diagonal causal mask for the sdpa, eager and flex attention kernels (flash-attention
  derives `cu_seqlens` from them) ONLY when no KV cache is passed: the model must be called with
  `use_cache=False` (`Batch.model_kwargs` does), or every example silently attends to the ones
  packed before it. The first label of each packed example is -100, so no loss term predicts an
  example's first token from the previous example's last.

Every example appears exactly once per epoch in every mode. Knows nothing about files or tokens.
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kubetune_trainer.data.formatting import IGNORE_INDEX, Example

if TYPE_CHECKING:
    import torch

BatchingMode = Literal["packing", "length-grouped", "none"]
MEGA_BATCH_MULT = 50  # micro-batches per length-sorted mega-chunk, as transformers uses


@dataclass
class Batch:
    """One micro-batch as tensors, plus the token counts the loop logs and normalizes by."""

    input_ids: torch.Tensor  # [B, T] int64
    labels: torch.Tensor  # [B, T] int64, -100 at padding and masked tokens
    attention_mask: torch.Tensor | None  # [B, T], None when packed (padding-free)
    position_ids: torch.Tensor | None  # [B, T], set when packed (restart per example)
    num_examples: int
    num_real_tokens: int  # non-pad tokens
    num_padded_tokens: int  # B * T slots
    num_target_tokens: int  # labels[:, 1:] != -100: the terms of the next-token loss

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a causal LM forward (labels excluded; `use_cache=False`)."""
        kwargs: dict[str, Any] = {"input_ids": self.input_ids, "use_cache": False}
        if self.attention_mask is not None:
            kwargs["attention_mask"] = self.attention_mask
        if self.position_ids is not None:
            kwargs["position_ids"] = self.position_ids
        return kwargs

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with its tensors on `device`."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            move(self.attention_mask),
            move(self.position_ids),
            self.num_examples,
            self.num_real_tokens,
            self.num_padded_tokens,
            self.num_target_tokens,
        )


def plan_batches(
    lengths: Sequence[int],
    *,
    mode: BatchingMode,
    micro_batch_size: int,
    max_tokens: int | None,
    seed: int,
    epoch: int,
) -> list[list[int]]:
    """Micro-batches of example indices for one epoch; the same (seed, epoch) gives the same plan."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    rng = random.Random(f"kubetune-batches:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if mode == "none":
        return _chunks(order, micro_batch_size)
    if mode == "length-grouped":
        return _length_grouped(order, lengths, micro_batch_size, rng)
    if mode == "packing":
        budget = (
            max_tokens if max_tokens is not None else micro_batch_size * max(lengths, default=1)
        )
        return _pack(order, lengths, budget, rng)
    raise ValueError(f"mode must be one of packing, length-grouped, none, got {mode!r}")


def _chunks(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


def _length_grouped(
    order: list[int], lengths: Sequence[int], size: int, rng: random.Random
) -> list[list[int]]:
    batches: list[list[int]] = []
    for mega in _chunks(order, size * MEGA_BATCH_MULT):
        mega.sort(key=lambda i: lengths[i], reverse=True)
        batches.extend(_chunks(mega, size))
    rng.shuffle(batches)
    if batches:
        longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batches[0], batches[longest] = batches[longest], batches[0]
    return batches


def _pack(
    order: list[int], lengths: Sequence[int], max_tokens: int, rng: random.Random
) -> list[list[int]]:
    """Best-fit decreasing: each example goes to the fullest bin it fits in, or a new bin."""
    longest = max(order, key=lambda i: lengths[i], default=None)
    if longest is not None and lengths[longest] > max_tokens:
        over = sum(1 for n in lengths if n > max_tokens)
        raise ValueError(
            f"packing: example {longest} has {lengths[longest]} tokens ({over} examples in all), "
            f"more than max_tokens={max_tokens} "
            "(raise training.maxTokensPerBatch or lower maxInputTokens + maxTargetTokens)"
        )
    order.sort(key=lambda i: lengths[i], reverse=True)  # stable: the shuffle breaks ties
    bins = best_fit(order, lengths, max_tokens)
    rng.shuffle(bins)
    return bins


def best_fit(order: Sequence[int], lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Bins of at most `max_tokens` tokens, each example of `order` (longest first) into the
    fullest bin it fits in, or a new bin; an example longer than `max_tokens` gets a bin alone."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in order:
        slot = bisect_left(free, (lengths[i], -1))
        if slot == len(free):
            bins.append([i])
            room, b = max_tokens - lengths[i], len(bins) - 1
        else:
            room, b = free.pop(slot)
            bins[b].append(i)
            room -= lengths[i]
        if room >= 0:
            insort(free, (room, b))
    return bins


def collate(examples: Sequence[Example], *, mode: BatchingMode, pad_token_id: int) -> Batch:
    """Tensors for one micro-batch: one packed row for `packing`, right-padded rows otherwise."""
    if not examples:
        raise ValueError("collate needs at least one example")
    if mode == "packing":
        return _collate_packed(examples)
    return _collate_padded(examples, pad_token_id)


def _collate_padded(examples: Sequence[Example], pad_token_id: int) -> Batch:
    import torch

    width = max(len(e.input_ids) for e in examples)
    pads = [width - len(e.input_ids) for e in examples]
    # One tensor per field, built from padded Python lists (no per-row tensors and copies).
    input_ids = [
        list(e.input_ids) + [pad_token_id] * p for e, p in zip(examples, pads, strict=True)
    ]
    labels = [list(e.labels) + [IGNORE_INDEX] * p for e, p in zip(examples, pads, strict=True)]
    mask = [[1] * (width - p) + [0] * p for p in pads]
    return _batch(
        torch.tensor(input_ids, dtype=torch.long),
        torch.tensor(labels, dtype=torch.long),
        torch.tensor(mask, dtype=torch.long),
        None,
        len(examples),
        real=width * len(examples) - sum(pads),
    )


def _collate_packed(examples: Sequence[Example]) -> Batch:
    import torch

    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for e in examples:
        ids.extend(e.input_ids)
        labels.append(IGNORE_INDEX)  # no loss across the boundary with the previous example
        labels.extend(e.labels[1:])
        positions.extend(range(len(e.input_ids)))

    def row(values: list[int]) -> torch.Tensor:
        return torch.tensor([values], dtype=torch.long)

    return _batch(row(ids), row(labels), None, row(positions), len(examples))


def _batch(
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    num_examples: int,
    real: int | None = None,
) -> Batch:
    if real is None:
        real = int(attention_mask.sum()) if attention_mask is not None else input_ids.numel()
    return Batch(
        input_ids=input_ids,
        labels=labels,
        attention_mask=attention_mask,
        position_ids=position_ids,
        num_examples=num_examples,
        num_real_tokens=real,
        num_padded_tokens=input_ids.numel(),
        num_target_tokens=int((labels[:, 1:] != IGNORE_INDEX).sum()),
    )


def padding_fraction(batches: Iterable[Batch]) -> float:
    """Share of token slots that are padding, over all `batches` (0.0 when packed)."""
    real = padded = 0
    for batch in batches:
        real += batch.num_real_tokens
        padded += batch.num_padded_tokens
    return 1.0 - real / padded if padded else 0.0


def plan_padding_fraction(
    plan: Sequence[Sequence[int]], lengths: Sequence[int], *, mode: BatchingMode
) -> float:
    """`padding_fraction` of a plan computed from lengths alone, without building tensors."""
    real = sum(lengths[i] for batch in plan for i in batch)
    if mode == "packing":
        return 0.0
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in plan if batch)
    return 1.0 - real / padded if padded else 0.0
