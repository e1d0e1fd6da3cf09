"""Evaluation: loss, perplexity and target-token accuracy on a held-out set.

Every process evaluates the whole (small) eval set, so FSDP's collective forwards stay in
step; only the main process reports. Called by the training loop every `evalEverySteps` and
at the end, and by `kubetune export` to compare an exported model with its source.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch
from torch import nn

from kubetune_trainer.data import Example, collate, plan_batches
from kubetune_trainer.loss import fused_loss


@torch.no_grad()
def evaluate(
    model: nn.Module,
    examples: Sequence[Example],
    *,
    micro_batch_size: int,
    pad_token_id: int,
    device: torch.device,
    autocast: AbstractContextManager[object],
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Mean token loss, perplexity and accuracy over the supervised tokens of `examples`."""
    was_training = model.training
    model.eval()
    loss_sum, correct, tokens = 0.0, 0.0, 0
    batches = plan_batches(
        [len(e.input_ids) for e in examples],
        mode="length-grouped",
        micro_batch_size=micro_batch_size,
        max_tokens=None,
        seed=0,
        epoch=0,
    )
    for ids in batches:
        batch = collate(
            [examples[i] for i in ids], mode="length-grouped", pad_token_id=pad_token_id
        )
        labels = batch.labels.to(device)
        with autocast, fused_loss(model, labels, chunk_size) as out:
            model(
                input_ids=batch.input_ids.to(device),
                attention_mask=None
                if batch.attention_mask is None
                else batch.attention_mask.to(device),
                use_cache=False,
            )
        loss_sum += float(out[0].loss_sum)
        correct += float(out[0].correct)
        tokens += int(out[0].tokens)
    model.train(was_training)
    mean = loss_sum / max(tokens, 1)
    return {
        "eval_loss": mean,
        "perplexity": math.exp(min(mean, 50.0)),
        "accuracy": correct / max(tokens, 1),
        "eval_tokens": float(tokens),
    }
