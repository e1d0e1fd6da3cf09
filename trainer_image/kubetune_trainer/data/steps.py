"""Optimizer steps of an epoch: which examples each step trains, fixed for the whole run.

`plan_steps` groups an epoch's examples into optimizer steps with the run's `Reference` batch
settings (its first attempt's micro-batch, accumulation and processes, kept in `run.json`), so
the steps do not move when a retry changes microBatchSize and gradientAccumulationSteps: step k
trains the same examples, the effective batch and the number of steps stay the same.
`split_step` cuts one step into the micro-batches of the current attempt, and `rank_share`
deals them to the processes. A checkpoint's data position is a sample cursor, the number of
examples of the epoch's steps (in order) already trained; `step_at` turns it back into a step.

Per mode (the order inside a step is `batching`'s):
- `none`: a seeded shuffle cut into steps of `micro x accumulation x processes` examples;
- `length-grouped`: the shuffle sorted by length inside mega-chunks of 50 steps, cut into
  steps, the steps shuffled and the one with the longest example first; a step's micro-batches
  are consecutive in length order (as transformers' `LengthGroupedSampler` with accumulation);
- `packing`: best-fit-decreasing bins of the reference token budget, `accumulation x processes`
  bins a step; with a smaller micro-batch each bin is packed again into bins of the smaller
  budget (`budget x micro / reference micro`), so the tokens per forward really shrink.

Pure: knows nothing about tensors, files or processes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from kubetune_trainer.data.batching import (
    BatchingMode,
    _chunks,
    _length_grouped,
    _pack,
    best_fit,
)

Step = list[list[int]]  # a step's micro-batches at the reference settings


@dataclass(frozen=True)
class Reference:
    """The batch settings a run's step plan is built with (its first attempt's)."""

    micro_batch_size: int
    accumulation: int
    world_size: int
    max_tokens_per_batch: int | None = None

    @property
    def step_examples(self) -> int:
        return self.micro_batch_size * self.accumulation * self.world_size

    def token_budget(self, longest: int, micro_batch_size: int | None = None) -> int:
        """Packing budget of one micro-batch at `micro_batch_size` (default: the reference's)."""
        base = self.max_tokens_per_batch or self.micro_batch_size * longest
        micro = micro_batch_size or self.micro_batch_size
        return max(1, base * micro // self.micro_batch_size)


def plan_steps(
    lengths: Sequence[int], *, mode: BatchingMode, ref: Reference, seed: int, epoch: int
) -> list[Step]:
    """The epoch's optimizer steps; the same (lengths, mode, ref, seed, epoch) gives the same plan."""
    rng = random.Random(f"kubetune-batches:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    micro = ref.micro_batch_size
    if mode == "none":
        return [_chunks(group, micro) for group in _chunks(order, ref.step_examples)]
    if mode == "length-grouped":
        groups = _length_grouped(order, lengths, ref.step_examples, rng)
        return [_chunks(group, micro) for group in groups]
    if mode == "packing":
        bins = _pack(order, lengths, ref.token_budget(max(lengths, default=1)), rng)
        per = ref.accumulation * ref.world_size
        return [bins[i : i + per] for i in range(0, len(bins), per)]
    raise ValueError(f"mode must be one of packing, length-grouped, none, got {mode!r}")


def split_step(
    step: Step, lengths: Sequence[int], *, mode: BatchingMode, micro_batch_size: int, budget: int
) -> list[list[int]]:
    """The step's micro-batches for this attempt: `micro_batch_size` rows (padded modes), or
    packs of at most `budget` tokens (a longer example alone)."""
    if mode != "packing":
        return _chunks([i for mb in step for i in mb], micro_batch_size)
    out: list[list[int]] = []
    for mb in step:
        if sum(lengths[i] for i in mb) <= budget:
            out.append(mb)
        else:
            out.extend(best_fit(sorted(mb, key=lambda i: -lengths[i]), lengths, budget))
    return out


def rank_share(micro_batches: list[list[int]], rank: int, world: int) -> list[list[int] | None]:
    """This process's micro-batches of a step; None marks a no-loss filler, so every process
    runs as many forwards as the others (FSDP's collectives stay in step)."""
    per_rank = -(-len(micro_batches) // world)
    mine: list[list[int] | None] = list(micro_batches[rank::world])
    return mine + [None] * (per_rank - len(mine))


def step_examples(step: Step) -> list[int]:
    return [i for mb in step for i in mb]


def step_at(steps: Sequence[Step], cursor: int) -> int:
    """The index of the step that starts at example `cursor`; ValueError when none does."""
    done = 0
    for k, step in enumerate(steps):
        if done == cursor:
            return k
        done += sum(len(mb) for mb in step)
    if done == cursor:
        return len(steps)
    raise ValueError(f"no step of this epoch starts at example {cursor}")
