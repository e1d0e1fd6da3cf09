"""Next-token loss fused with the output projection, computed in chunks on supervised tokens only.

Qwen3's vocabulary has 151,936 entries, so on small models the output layer and the loss
dominate time and memory. The plain path (`model(..., labels=...)`) materialises fp32 logits
for every position of the batch: B x T x 151,936 x 4 bytes. Here the model's `lm_head` forward
is replaced, for the duration of a `with fused_loss(model, labels)` block, by one that:
  1. shifts labels by one and keeps only positions that carry loss (prompt tokens are skipped),
  2. projects those hidden states to the vocabulary in chunks of `chunk_size` tokens,
  3. computes cross-entropy in fp32 per chunk under activation checkpointing, so backward
     recomputes each chunk's logits instead of keeping them all.
Doing this inside the model's own forward keeps it correct under FSDP2 (the weight is gathered
there) and with peft prefix-tuning (which wraps the forward). Called by the train and eval loops.
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

IGNORE_INDEX = -100


@dataclass
class LossSums:
    """Summed loss and counts of one forward pass; divide by the accumulated token count."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    tokens: torch.Tensor


def _chunk_stats(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight).float()
    loss = F.cross_entropy(logits, labels, reduction="sum")
    correct = (logits.argmax(dim=-1) == labels).sum().to(loss.dtype)
    return torch.stack([loss, correct.detach()])


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_size: int
) -> LossSums:
    """Sum of next-token cross-entropy over supervised positions.

    hidden: [B, T, H] final hidden states; labels: [B, T] with IGNORE_INDEX where no loss.
    """
    shifted_labels = labels[:, 1:].reshape(-1)
    keep = shifted_labels != IGNORE_INDEX
    h = hidden[:, :-1, :].reshape(-1, hidden.shape[-1])[keep]
    y = shifted_labels[keep]
    total = hidden.new_zeros(2, dtype=torch.float32)
    for start in range(0, y.shape[0], chunk_size):
        args = (h[start : start + chunk_size], weight, y[start : start + chunk_size])
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_stats, *args, use_reentrant=False)
        else:
            total = total + _chunk_stats(*args)
    return LossSums(loss_sum=total[0], correct=total[1], tokens=keep.sum())


def _output_layer(model: nn.Module) -> nn.Linear:
    inner: Any = model
    if hasattr(inner, "get_base_model"):  # peft PeftModel
        inner = inner.get_base_model()
    head = inner.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise TypeError(f"expected an nn.Linear output layer, got {type(head).__name__}")
    return head


@contextmanager
def fused_loss(
    model: nn.Module, labels: torch.Tensor, chunk_size: int = 1024
) -> Iterator[list[LossSums]]:
    """Within the block, the model's forward computes LossSums instead of logits.

    Usage: `with fused_loss(model, labels) as out: model(input_ids=...)`, then `out[0]`.
    """
    head = _output_layer(model)
    results: list[LossSums] = []

    def forward(self: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
        sums = chunked_cross_entropy(hidden, self.weight, labels, chunk_size)
        results.append(sums)
        return hidden.new_zeros(1)  # stands in for logits; nothing downstream reads it

    head.forward = MethodType(forward, head)  # type: ignore[method-assign]
    try:
        yield results
    finally:
        del head.forward  # back to the class's forward
