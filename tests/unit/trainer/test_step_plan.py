"""The step plan: fixed per run, so a retry with another micro-batch trains the same steps."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kubetune_trainer.data.steps import (
    Reference,
    plan_steps,
    rank_share,
    split_step,
    step_at,
    step_examples,
)

LENGTHS = [random.Random(3).randint(5, 120) for _ in range(287)]  # the FAQ's row count
MODES = ["none", "length-grouped", "packing"]


def _plan(mode: str, ref: Reference, epoch: int = 0) -> list[list[list[int]]]:
    return plan_steps(LENGTHS, mode=mode, ref=ref, seed=42, epoch=epoch)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", MODES)
def test_every_example_once_per_epoch(mode: str) -> None:
    ref = Reference(8, 2, 1, 600 if mode == "packing" else None)
    for epoch in (0, 1):
        done = Counter(i for step in _plan(mode, ref, epoch) for i in step_examples(step))
        assert done == Counter(range(len(LENGTHS)))


@pytest.mark.parametrize("mode", MODES)
def test_halved_micro_batch_keeps_steps_and_examples(mode: str) -> None:
    """The issue's measurement: 8x2 -> 4x4 mid-epoch must train nothing twice, nothing never."""
    ref = Reference(8, 2, 1, 600 if mode == "packing" else None)
    steps = _plan(mode, ref)
    budget = ref.token_budget(max(LENGTHS), 4)
    cursor = sum(len(step_examples(s)) for s in steps[:5])  # a mid-epoch checkpoint
    k = step_at(steps, cursor)
    assert k == 5
    trained = [i for s in steps[:k] for i in step_examples(s)]
    for step in steps[k:]:
        micro = split_step(step, LENGTHS, mode=mode, micro_batch_size=4, budget=budget)  # type: ignore[arg-type]
        assert sorted(i for mb in micro for i in mb) == sorted(step_examples(step))
        if mode == "packing":
            assert all(sum(LENGTHS[i] for i in mb) <= 300 for mb in micro), "budget must halve"
        else:
            assert all(len(mb) <= 4 for mb in micro)
        trained += [i for mb in micro for i in mb]
    assert Counter(trained) == Counter(range(len(LENGTHS)))


def test_packing_budget_follows_the_micro_batch() -> None:
    assert Reference(8, 2, 1, 4096).token_budget(100, 4) == 2048
    assert Reference(8, 2, 1, None).token_budget(100) == 800
    assert Reference(8, 2, 1, None).token_budget(100, 4) == 400


def test_reference_step_size_and_steps() -> None:
    ref = Reference(8, 2, 1)
    steps = _plan("none", ref)
    assert [len(step_examples(s)) for s in steps[:-1]] == [16] * (len(steps) - 1)
    assert len(steps) == -(-len(LENGTHS) // 16)


def test_length_grouped_puts_the_longest_step_first() -> None:
    steps = _plan("length-grouped", Reference(4, 2, 1))
    assert max(LENGTHS) in [LENGTHS[i] for i in step_examples(steps[0])]


def test_rank_share_gives_every_process_as_many_forwards() -> None:
    mbs = [[0], [1], [2], [3], [4]]
    shares = [rank_share(mbs, r, 2) for r in range(2)]
    assert shares == [[[0], [2], [4]], [[1], [3], None]]


def test_a_cursor_between_steps_is_refused() -> None:
    steps = _plan("none", Reference(4, 1, 1))
    with pytest.raises(ValueError, match="starts at example 3"):
        step_at(steps, 3)
    assert step_at(steps, len(LENGTHS)) == len(steps)


def test_oversized_example_gets_a_micro_batch_alone_after_a_halving() -> None:
    lengths = [100, 90, 10, 10]
    step = [[0], [1, 2, 3]]
    micro = split_step(step, lengths, mode="packing", micro_batch_size=1, budget=60)
    assert sorted(map(sorted, micro)) == [[0], [1], [2, 3]]
