"""The data order of a run: its optimizer steps, this attempt's micro-batches, the bookkeeping.

`DataOrder` ties `data.steps` (the step plan, fixed by the run's `Reference`) to the prepared
examples: each epoch's steps as indices into `Prepared.train` (a mixture draws a subset), one
step cut into this attempt's micro-batches and dealt to the processes, then collated; the sample
cursor and the per-epoch tally advanced after each step; and, for the summary, whether every
epoch trained each of its examples exactly once. Called by `train.Loop`; knows nothing about
models or optimizers.
"""

from __future__ import annotations

from typing import Any

from kubetune_api import ConfigError, TrainerConfig, TrainingSpec
from kubetune_trainer.checkpoint import TrainState, example_digest
from kubetune_trainer.data import Batch, DataError, collate
from kubetune_trainer.data.steps import (
    Reference,
    Step,
    plan_steps,
    rank_share,
    split_step,
    step_examples,
)
from kubetune_trainer.distributed import Runtime
from kubetune_trainer.prepare import Prepared


def reference_of(cfg: TrainerConfig, rt: Runtime) -> Reference:
    """This attempt's batch settings (the run's reference when it is the first attempt)."""
    t = cfg.training
    try:
        micro = t.resolved_micro_batch(rt.world_size)
    except ValueError as err:
        raise ConfigError([str(err)]) from None
    return Reference(micro, t.gradient_accumulation_steps, rt.world_size, t.max_tokens_per_batch)


class DataOrder:
    """Steps of the run's plan, micro-batches of this attempt."""

    def __init__(
        self, data: Prepared, t: TrainingSpec, ref: Reference, micro: int, rt: Runtime
    ) -> None:
        self.data, self.t, self.ref, self.micro, self.rt = data, t, ref, micro, rt
        self.pad_id = int(data.tokenizer.pad_token_id)
        self.lengths = [len(e.input_ids) for e in data.train]
        self.budget = ref.token_budget(max(self.lengths), micro)
        self._check_packing_fits()

    def _check_packing_fits(self) -> None:
        """Under packing, an example over the token budget is bad data: name its file:line."""
        if self.t.dynamic_batching != "packing":
            return
        budget = self.ref.token_budget(max(self.lengths))
        over = [e for e in self.data.train if len(e.input_ids) > budget]
        if over:
            e = max(over, key=len)
            raise DataError(
                e.path,
                e.line,
                f"{len(e)} tokens, more than the packing budget of {budget} tokens per "
                f"micro-batch ({len(over)} examples in all); raise training.maxTokensPerBatch or "
                "lower dataset.maxInputTokens + maxTargetTokens",
            )

    def epoch_steps(self, epoch: int) -> list[Step]:
        """This epoch's optimizer steps (indices into `data.train`)."""
        drawn = self.data.epoch_indices(self.t.seed, epoch)
        plan = plan_steps(
            [self.lengths[i] for i in drawn],
            mode=self.t.dynamic_batching,
            ref=self.ref,
            seed=self.t.seed,
            epoch=epoch,
        )
        return [[[drawn[i] for i in mb] for mb in step] for step in plan]

    def total_steps(self) -> int:
        total = sum(len(self.epoch_steps(e)) for e in range(self.t.epochs))
        return min(total, self.t.max_steps) if self.t.max_steps else total

    def split(self, step: Step) -> list[list[int]]:
        """One step's micro-batches at this attempt's micro-batch size and token budget."""
        return split_step(
            step,
            self.lengths,
            mode=self.t.dynamic_batching,
            micro_batch_size=self.micro,
            budget=self.budget,
        )

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All micro-batches of an epoch, in order."""
        return [mb for step in self.epoch_steps(epoch) for mb in self.split(step)]

    def micro_batch(self, batches: list[list[int]], slot: int) -> Batch:
        """Micro-batch `slot` of `batches`; -1 is a no-loss filler (a copy of the first)."""
        batch = collate(
            [self.data.train[i] for i in batches[max(slot, 0)]],
            mode=self.t.dynamic_batching,
            pad_token_id=self.pad_id,
        )
        if slot < 0:
            batch.labels.fill_(-100)
            batch.num_real_tokens = batch.num_target_tokens = 0
        return batch

    def step_batches(self, step: Step) -> list[Batch]:
        """This process's share of one step, as tensors."""
        mbs = self.split(step)
        share = rank_share(mbs, self.rt.rank, self.rt.world_size)
        return [
            self.micro_batch(mbs, -1) if mb is None else self.micro_batch([mb], 0) for mb in share
        ]

    @staticmethod
    def advance(st: TrainState, steps: list[Step], k: int) -> None:
        """Account for step k of the epoch: the step counter, the sample cursor, the tally."""
        done = step_examples(steps[k])
        st.global_step += 1
        st.tally(st.epoch).add(done)
        st.cursor += len(done)
        if k == len(steps) - 1:
            st.epoch, st.cursor = st.epoch + 1, 0

    def accounting(self, st: TrainState) -> dict[str, Any]:
        """Examples trained per epoch, and whether each epoch trained every drawn example once."""
        once = []
        for e, tally in enumerate(st.tallies):
            drawn = self.data.epoch_indices(self.t.seed, e)
            digest = sum(example_digest(i) for i in drawn) % 2**64
            once.append(tally.examples == len(drawn) and tally.digest == digest)
        return {
            "examples_per_epoch": [t.examples for t in st.tallies],
            "every_example_once_per_epoch": once,
        }
