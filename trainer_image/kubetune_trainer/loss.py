"""Next-token loss fused with the output projection, computed in chunks on supervised tokens only.

Qwen3's vocabulary has 151,936 entries, so on small models the output layer and the loss
dominate time and memory. The plain path (`model(..., labels=...)`) materialises fp32 logits
for every position of the batch: B x T x 151,936 x 4 bytes. Here the model's `lm_head` forward
is replaced, for the duration of a `with fused_loss(model, labels)` block, by one that:
  1. shifts labels by one and keeps only positions that carry loss (prompt tokens are skipped),
  2. projects those hidden states to the vocabulary in chunks of `chunk_size` tokens,
  3. computes cross-entropy in fp32 per chunk under activation checkpointing, so backward
     recomputes each chunk's logits instead of keeping them all;
  where all supervised positions' logits are small (`kubetune_api.memory.loss_rows_at_once`:
  no more than one chunk's, or 64 MiB) they are projected at once and not recomputed.
Doing this inside the model's own forward keeps it correct under FSDP2 (the weight is gathered
there) and with peft prefix-tuning (which wraps the forward). Called by the train and eval loops.

With `unlikelihood > 0` each chunk also adds the token-level unlikelihood loss of Welleck et
al. (2019, "Neural Text Generation with Unlikelihood Training"): at every supervised position t
the candidates are the distinct tokens of the same target run before t (at most
`UL_WINDOW` back, the gold token excluded) and the term is -sum log(1 - p(c)), weighted by the
coefficient. A "target run" is a maximal span of supervised labels, so packed examples and
separate assistant turns never penalise each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from kubetune_api.memory import loss_rows_at_once

IGNORE_INDEX = -100
UL_WINDOW = 64  # how far back in the target the unlikelihood candidates reach


@dataclass
class LossSums:
    """Summed loss and counts of one forward pass; divide by the accumulated token count."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    tokens: torch.Tensor


def _chunk_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    candidates: torch.Tensor | None,
    ul_weight: float,
    count_correct: bool = True,
) -> torch.Tensor:
    logits = F.linear(hidden, weight).float()
    loss = F.cross_entropy(logits, labels, reduction="sum")
    # The training loop reads only the loss: no argmax pass over the logits there.
    hits = (logits.argmax(dim=-1) == labels).sum() if count_correct else loss.new_zeros(())
    correct = hits.to(loss.dtype)
    if candidates is not None and ul_weight > 0:
        loss = loss + ul_weight * _unlikelihood(logits, candidates)
    return torch.stack([loss, correct.detach()])


def _unlikelihood(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """-sum over valid candidates of log(1 - p(candidate)); candidates < 0 are padding."""
    probs = logits.softmax(dim=-1)
    valid = candidates >= 0
    p = probs.gather(1, candidates.clamp(min=0))
    one_minus = (1.0 - p).clamp(min=1e-5)
    return -(one_minus.log() * valid).sum()


def unlikelihood_candidates(
    y: torch.Tensor, run_start: torch.Tensor, window: int = UL_WINDOW
) -> torch.Tensor:
    """[M, window] earlier distinct tokens of each position's target run (-1 = none).

    y: [M] gold tokens of the supervised positions in order; run_start: [M] index (into y) of
    the first position of the run each position belongs to.
    """
    idx = torch.arange(y.shape[0], device=y.device)
    back = idx[:, None] - torch.arange(1, window + 1, device=y.device)[None, :]
    ok = back >= run_start[:, None]
    cand = torch.where(ok, y[back.clamp(min=0)], torch.full_like(back, -1))
    cand = torch.where(cand == y[:, None], torch.full_like(cand, -1), cand)
    same = cand[:, :, None] == cand[:, None, :]
    earlier = torch.ones(window, window, dtype=torch.bool, device=y.device).tril(-1)
    dup = (same & earlier[None]).any(dim=-1)
    return torch.where(dup, torch.full_like(cand, -1), cand)


def _run_starts(keep: torch.Tensor, row_len: int) -> torch.Tensor:
    """For each kept position (flattened [B*(T-1)]), the index among kept ones where its run starts."""
    pos = torch.arange(keep.shape[0], device=keep.device)
    prev_kept = torch.zeros_like(keep)
    prev_kept[1:] = keep[:-1]
    prev_kept[pos % row_len == 0] = False  # a new row starts a new run
    starts = keep & ~prev_kept
    order = torch.cumsum(keep.long(), 0) - 1  # index among kept positions
    run_id = torch.cumsum(starts.long(), 0)[keep] - 1
    first_of_run = order[starts]
    return first_of_run[run_id]


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int,
    unlikelihood: float = 0.0,
    count_correct: bool = True,
) -> LossSums:
    """Sum of next-token cross-entropy (+ weighted unlikelihood) over supervised positions.

    hidden: [B, T, H] final hidden states; labels: [B, T] with IGNORE_INDEX where no loss.
    """
    shifted_labels = labels[:, 1:].reshape(-1)
    keep = shifted_labels != IGNORE_INDEX
    h = hidden[:, :-1, :].reshape(-1, hidden.shape[-1])[keep]
    y = shifted_labels[keep]
    cands = None
    if unlikelihood > 0 and y.numel():
        cands = unlikelihood_candidates(y, _run_starts(keep, labels.shape[1] - 1))
    rows = y.shape[0]
    if loss_rows_at_once(rows, weight.shape[0], chunk_size) >= rows:  # small: plain logits
        total = _chunk_stats(h, weight, y, cands, unlikelihood, count_correct)
        return LossSums(loss_sum=total[0], correct=total[1], tokens=keep.sum())
    total = hidden.new_zeros(2, dtype=torch.float32)
    for start in range(0, rows, chunk_size):
        end = start + chunk_size
        chunk_cands = None if cands is None else cands[start:end]
        args = (h[start:end], weight, y[start:end], chunk_cands, unlikelihood, count_correct)
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_stats, *args, use_reentrant=False)
        else:
            total = total + _chunk_stats(*args)
    return LossSums(loss_sum=total[0], correct=total[1], tokens=keep.sum())


def _output_layer(model: nn.Module) -> nn.Linear:
    inner: Any = model
    if isinstance(getattr(inner, "module", None), nn.Module):  # DDP (zeroStage 0, processes > 1)
        inner = inner.module
    if hasattr(inner, "get_base_model"):  # peft PeftModel
        inner = inner.get_base_model()
    head = inner.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise TypeError(f"expected an nn.Linear output layer, got {type(head).__name__}")
    return head


@contextmanager
def fused_loss(
    model: nn.Module,
    labels: torch.Tensor,
    chunk_size: int = 1024,
    unlikelihood: float = 0.0,
    count_correct: bool = True,
) -> Iterator[list[LossSums]]:
    """Within the block, the model's forward computes LossSums instead of logits.

    Usage: `with fused_loss(model, labels) as out: model(input_ids=...)`, then `out[0]`.
    `count_correct=False` (training) leaves `correct` at 0 and skips the argmax.
    """
    head = _output_layer(model)
    results: list[LossSums] = []

    def forward(self: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
        sums = chunked_cross_entropy(
            hidden, self.weight, labels, chunk_size, unlikelihood, count_correct
        )
        results.append(sums)
        return hidden.new_zeros(1)  # stands in for logits; nothing downstream reads it

    head.forward = MethodType(forward, head)  # type: ignore[method-assign]
    try:
        yield results
    finally:
        del head.forward  # back to the class's forward
