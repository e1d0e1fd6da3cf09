"""Batch planning (all three modes), collation, padding fractions, and packing correctness."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from kubetune_trainer import packed_attention
from kubetune_trainer.data import (
    IGNORE_INDEX,
    BatchingMode,
    Example,
    collate,
    padding_fraction,
    plan_batches,
    plan_padding_fraction,
)

MODES: list[BatchingMode] = ["none", "length-grouped", "packing"]


def skewed_lengths(n: int = 500, seed: int = 1) -> list[int]:
    """Mostly short sequences with a long tail, like chat data."""
    rng = random.Random(seed)
    return [min(int(rng.lognormvariate(4.0, 0.8)) + 8, 1000) for _ in range(n)]


def plan(lengths: list[int], mode: BatchingMode, *, epoch: int = 0, max_tokens: int | None = None):
    return plan_batches(
        lengths, mode=mode, micro_batch_size=8, max_tokens=max_tokens, seed=7, epoch=epoch
    )


@pytest.mark.parametrize("mode", MODES)
def test_plan_is_deterministic_and_covers_every_index_once(mode: BatchingMode) -> None:
    lengths = skewed_lengths()
    first, again, other_epoch = (
        plan(lengths, mode),
        plan(lengths, mode),
        plan(lengths, mode, epoch=1),
    )
    assert first == again
    assert first != other_epoch
    for p in (first, other_epoch):
        assert sorted(i for batch in p for i in batch) == list(range(len(lengths)))


def test_none_mode_uses_fixed_micro_batches() -> None:
    batches = plan(skewed_lengths(101), "none")
    assert [len(b) for b in batches] == [8] * 12 + [5]


def test_length_grouping_pads_less_than_none_and_puts_the_longest_first() -> None:
    lengths = skewed_lengths()
    grouped = plan(lengths, "length-grouped")
    none = plan(lengths, "none")
    assert plan_padding_fraction(grouped, lengths, mode="length-grouped") < 0.5 * (
        plan_padding_fraction(none, lengths, mode="none")
    )
    assert max(lengths) in [lengths[i] for i in grouped[0]]
    assert sorted(len(b) for b in grouped)[1:] == [8] * (len(grouped) - 1)  # 500 = 62 x 8 + 4


def test_packing_respects_the_budget_and_wastes_little() -> None:
    lengths = skewed_lengths()
    budget = 1024
    bins = plan(lengths, "packing", max_tokens=budget)
    loads = [sum(lengths[i] for i in b) for b in bins]
    assert max(loads) <= budget
    assert len(bins) <= sum(lengths) // budget + 2  # best-fit decreasing: nearly full bins
    assert plan_padding_fraction(bins, lengths, mode="packing") == 0.0


def test_packing_default_budget_is_micro_batch_times_longest() -> None:
    lengths = [10, 20, 30, 40]
    bins = plan_batches(
        lengths, mode="packing", micro_batch_size=2, max_tokens=None, seed=0, epoch=0
    )
    assert all(sum(lengths[i] for i in b) <= 80 for b in bins)
    assert len(bins) == 2


def test_packing_rejects_an_example_longer_than_the_budget() -> None:
    with pytest.raises(
        ValueError,
        match=r"example 1 has 300 tokens \(1 examples in all\), more than max_tokens=256",
    ):
        plan_batches([10, 300], mode="packing", micro_batch_size=1, max_tokens=256, seed=0, epoch=0)


def test_plan_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="micro_batch_size must be >= 1, got 0"):
        plan_batches([1], mode="none", micro_batch_size=0, max_tokens=None, seed=0, epoch=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        plan_batches([1], mode="sorted", micro_batch_size=1, max_tokens=None, seed=0, epoch=0)  # type: ignore[arg-type]


def example(n: int, prompt: int, start: int = 10) -> Example:
    ids = list(range(start, start + n))
    return Example(ids, [IGNORE_INDEX] * prompt + ids[prompt:], line=1)


def test_collate_padded_shapes_and_counts() -> None:
    batch = collate([example(5, 2), example(3, 1)], mode="length-grouped", pad_token_id=0)
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape == (2, 5)
    assert batch.position_ids is None
    assert batch.input_ids[1].tolist() == [10, 11, 12, 0, 0]
    assert batch.labels[1].tolist() == [IGNORE_INDEX, 11, 12, IGNORE_INDEX, IGNORE_INDEX]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert (batch.num_real_tokens, batch.num_padded_tokens, batch.num_target_tokens) == (8, 10, 5)
    assert batch.num_examples == 2
    assert padding_fraction([batch]) == pytest.approx(0.2)


def test_collate_packed_is_one_row_with_restarting_positions() -> None:
    batch = collate(
        [example(4, 0, start=10), example(3, 1, start=20)], mode="packing", pad_token_id=0
    )
    assert batch.attention_mask is None
    assert batch.input_ids.tolist() == [[10, 11, 12, 13, 20, 21, 22]]
    assert batch.position_ids is not None
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    # First label of each example masked: no loss term crosses the boundary.
    assert batch.labels.tolist() == [[IGNORE_INDEX, 11, 12, 13, IGNORE_INDEX, 21, 22]]
    assert (batch.num_real_tokens, batch.num_padded_tokens, batch.num_target_tokens) == (7, 7, 5)
    assert padding_fraction([batch]) == 0.0
    assert batch.model_kwargs()["use_cache"] is False


@pytest.mark.parametrize("mode", MODES)
def test_padding_fraction_of_tensors_matches_the_plan(mode: BatchingMode) -> None:
    lengths = skewed_lengths(64)
    examples = [example(n, n // 2) for n in lengths]
    p = plan(lengths, mode)
    batches = [collate([examples[i] for i in b], mode=mode, pad_token_id=0) for b in p]
    assert padding_fraction(batches) == pytest.approx(plan_padding_fraction(p, lengths, mode=mode))
    real = sum(b.num_real_tokens for b in batches)
    assert real == sum(lengths)


# Packing correctness on a real (tiny, random) Qwen3 --------------------------------------------


@pytest.fixture(scope="module")
def four_examples() -> list[Example]:
    """Random token sequences of uneven lengths (ids inside the small vocabulary)."""
    rng = random.Random(0)
    examples = []
    for line, n in enumerate((7, 19, 3, 12)):
        ids = [rng.randrange(5, 2000) for _ in range(n)]
        examples.append(Example(ids, [IGNORE_INDEX, *ids[1:]], line=line))
    return examples


def _model(tiny_model_dir: Path, attn: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    packed_attention.register()
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation=attn
    )
    return model.eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager", packed_attention.ATTENTION])
def test_packed_logits_equal_unpacked_without_cache(
    tiny_model_dir: Path, four_examples: list[Example], attn: str
) -> None:
    """Padding-free packing is exact: same logits and same loss as one example at a time."""
    examples = four_examples
    model = _model(tiny_model_dir, attn)
    packed = collate(examples, mode="packing", pad_token_id=0)
    with torch.no_grad():
        logits = model(**packed.model_kwargs()).logits[0]
        singles = [
            model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits[0]
            for e in examples
        ]
    pieces = torch.split(logits, [len(e.input_ids) for e in examples])
    for got, want in zip(pieces, singles, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    loss_packed = _loss_sum(logits[None], packed.labels)
    loss_single = sum(
        _loss_sum(s[None], torch.tensor([e.labels])) for s, e in zip(singles, examples, strict=True)
    )
    torch.testing.assert_close(loss_packed, loss_single, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packing_with_the_kv_cache_on_leaks_across_examples(
    tiny_model_dir: Path, four_examples: list[Example], attn: str
) -> None:
    """With `use_cache=True` (the config default, even in train mode) transformers 5 skips the
    packed-sequence mask, so later examples attend to earlier ones: always pass use_cache=False."""
    examples = four_examples
    model = _model(tiny_model_dir, attn)
    packed = collate(examples, mode="packing", pad_token_id=0)
    kwargs = {**packed.model_kwargs(), "use_cache": True}
    with torch.no_grad():
        logits = model(**kwargs).logits[0]
        first = model(input_ids=torch.tensor([examples[0].input_ids]), use_cache=False).logits[0]
        second = model(input_ids=torch.tensor([examples[1].input_ids]), use_cache=False).logits[0]
    n0 = len(examples[0].input_ids)
    torch.testing.assert_close(logits[:n0], first, atol=1e-5, rtol=1e-5)  # nothing before it
    assert (logits[n0 : n0 + len(examples[1].input_ids)] - second).abs().max() > 1e-3


def test_per_example_attention_has_the_dense_paths_gradients(
    tiny_model_dir: Path, four_examples: list[Example]
) -> None:
    """The trainer's packed attention (one sdpa call per example) trains exactly like the dense
    block-diagonal mask: same loss, same gradient on every weight."""
    grads = {}
    for attn in ("sdpa", packed_attention.ATTENTION):
        model = _model(tiny_model_dir, attn).train()
        packed = collate(four_examples, mode="packing", pad_token_id=0)
        loss = _loss_sum(model(**packed.model_kwargs()).logits, packed.labels)
        loss.backward()
        grads[attn] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    dense, ours = grads["sdpa"], grads[packed_attention.ATTENTION]
    assert dense.keys() == ours.keys() and len(dense) > 10
    for name in dense:
        torch.testing.assert_close(ours[name], dense[name], atol=1e-5, rtol=1e-4, msg=name)


def test_segment_bounds() -> None:
    bounds = packed_attention.segment_bounds
    assert bounds(torch.tensor([[0, 1, 2, 0, 1, 0]]), 6) == [0, 3, 5, 6]
    assert bounds(torch.tensor([[0, 1, 2, 3]]), 4) is None  # one example: the dense path
    assert bounds(torch.tensor([[0, 1], [0, 1]]), 2) is None  # padded rows, not a pack
    assert bounds(None, 4) is None


def test_padded_logits_equal_unpacked(tiny_model_dir: Path, four_examples: list[Example]) -> None:
    examples = four_examples
    model = _model(tiny_model_dir, "sdpa")
    batch = collate(examples, mode="length-grouped", pad_token_id=0)
    with torch.no_grad():
        logits = model(**batch.model_kwargs()).logits
        for row, e in enumerate(examples):
            want = model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits[0]
            torch.testing.assert_close(logits[row, : len(e.input_ids)], want, atol=1e-5, rtol=1e-5)


def _loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy: logits at t predict labels at t + 1."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1),
        labels[:, 1:].flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
