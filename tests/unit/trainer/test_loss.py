"""The fused, chunked loss equals the plain full-logits cross-entropy, in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen3Config, Qwen3ForCausalLM

from kubetune_api import memory
from kubetune_trainer.loss import IGNORE_INDEX, chunked_cross_entropy, fused_loss


def _reference(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ weight.T).float()[:, :-1]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


@pytest.mark.parametrize("plain_bytes", [0, memory.PLAIN_LOGITS_BYTES])  # 0: always chunk
@pytest.mark.parametrize("chunk", [3, 16, 4096])
def test_chunked_matches_reference_value_and_grad(
    chunk: int, plain_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "PLAIN_LOGITS_BYTES", plain_bytes)
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 8, requires_grad=True)
    weight = torch.randn(50, 8, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9))
    labels[0, :4] = IGNORE_INDEX  # a masked prompt
    ref = _reference(hidden, weight, labels)
    ref_grads = torch.autograd.grad(ref, (hidden, weight))
    got = chunked_cross_entropy(hidden, weight, labels, chunk)
    grads = torch.autograd.grad(got.loss_sum, (hidden, weight))
    assert torch.allclose(got.loss_sum, ref, atol=1e-5)
    assert int(got.tokens) == int((labels[:, 1:] != IGNORE_INDEX).sum())
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_rows_at_once_plain_when_logits_are_small() -> None:
    """Small vocabulary: every supervised row at once; Qwen3's: the configured chunk."""
    assert memory.loss_rows_at_once(2000, 2624, 256) == 2000  # 2000 x 2624 x 12 B = 60 MiB
    assert memory.loss_rows_at_once(1000, 151_936, 256) == 256
    assert memory.loss_rows_at_once(200, 151_936, 256) == 200  # within one chunk anyway


def test_training_skips_the_argmax() -> None:
    hidden = torch.eye(4).unsqueeze(0)
    labels = torch.tensor([[IGNORE_INDEX, 0, 1, 3]])
    sums = chunked_cross_entropy(hidden, torch.eye(4), labels, 2, count_correct=False)
    assert int(sums.correct) == 0 and int(sums.tokens) == 3


def test_accuracy_counts_argmax_hits() -> None:
    weight = torch.eye(4)
    hidden = torch.eye(4)[[0, 1, 2, 3]].unsqueeze(0)  # position t predicts token t
    labels = torch.tensor(
        [[IGNORE_INDEX, 0, 1, 3]]
    )  # shifted targets: 0, 1, 3 at positions 0, 1, 2
    sums = chunked_cross_entropy(hidden, weight, labels, 2)
    assert int(sums.tokens) == 3 and int(sums.correct) == 2


def test_fused_loss_in_a_real_qwen3_matches_transformers_loss() -> None:
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=True,
    )
    model = Qwen3ForCausalLM(config).eval()
    ids = torch.randint(0, 300, (2, 12))
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX
    expected = model(input_ids=ids, labels=labels).loss  # mean over supervised tokens
    with fused_loss(model, labels, chunk_size=7) as out:
        model(input_ids=ids, use_cache=False)
    assert torch.allclose(out[0].loss_sum / out[0].tokens, expected, atol=1e-5)
    # the original head is back afterwards
    assert model(input_ids=ids).logits.shape == (2, 12, 300)


def test_unlikelihood_candidates_stay_in_their_run_and_are_distinct() -> None:
    from kubetune_trainer.loss import _run_starts, unlikelihood_candidates

    # one row: prompt (ignored), run A = 5 6 5 7, ignored gap, run B = 6 8
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6, 5, 7, IGNORE_INDEX, 6, 8]])
    keep = labels[:, 1:].reshape(-1) != IGNORE_INDEX
    y = labels[:, 1:].reshape(-1)[keep]
    cands = unlikelihood_candidates(y, _run_starts(keep, labels.shape[1] - 1), window=4)
    as_sets = [set(row.tolist()) - {-1} for row in cands]
    assert as_sets == [set(), {5}, {6}, {5, 6}, set(), {6}]  # gold excluded, runs separate
    assert (cands[3] >= 0).sum() == 2  # 5 appears twice before 7 but is penalised once


def test_unlikelihood_adds_penalty_on_repeated_tokens() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(1, 8, 8, requires_grad=True)
    weight = torch.randn(20, 8)
    labels = torch.tensor([[IGNORE_INDEX, 3, 4, 3, 4, 3, 4, 3]])
    plain = chunked_cross_entropy(hidden, weight, labels, 4)
    with_ul = chunked_cross_entropy(hidden, weight, labels, 4, unlikelihood=1.0)
    assert float(with_ul.loss_sum.detach()) > float(plain.loss_sum.detach())
    # pushing probability away from earlier tokens: the gradient differs from plain CE
    g_plain = torch.autograd.grad(plain.loss_sum, hidden)[0]
    g_ul = torch.autograd.grad(with_ul.loss_sum, hidden)[0]
    assert not torch.allclose(g_plain, g_ul)
