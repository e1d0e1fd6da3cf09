"""Padding-free attention for packed micro-batches: each example attends to itself only.

With `dynamicBatching: packing` a micro-batch is ONE row holding several examples whose
`position_ids` restart at 0 (see `data.batching`). Transformers turns that into a dense
block-diagonal causal mask over the whole row, and sdpa then computes all T x T scores, almost
all of them masked: a 2,048-token pack of 40 examples costs about 40 times the attention work it
needs, which on a small model (or any CPU) is most of the step. `packed_sdpa`, registered as the
attention implementation `ATTENTION`, runs causal sdpa on each example's slice instead and
concatenates the outputs: the same result (tests/unit/test_packed_attention.py compares it with
the dense path, forward and backward), at sum(len_i^2) cost. Anything else (padded batches,
eval, one example per row) goes to transformers' own sdpa unchanged.

The training loop loads the base model with `ATTENTION` when it packs (`register()` first; it is
idempotent). Nothing happens at import. Knows nothing of data or tokens.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch

ATTENTION = "kubetune_packed_sdpa"


def segment_bounds(position_ids: torch.Tensor | None, length: int) -> list[int] | None:
    """[0, s1, s2, ..., length] where a new example starts in a one-row pack, or None when the
    row is not a pack of several examples (so the dense path applies)."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    row = position_ids[0]
    if row.numel() != length:
        return None
    starts = (torch.diff(row) != 1).nonzero().flatten().add(1).tolist()
    return [0, *starts, length] if starts else None


def packed_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Transformers' attention interface: [B, heads, T, D] in, [B, T, heads, D] out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = segment_bounds(position_ids, query.shape[2])
    if bounds is None or key.shape[2] != query.shape[2]:  # not a pack, or a KV cache
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    outs = [
        sdpa_attention_forward(
            module,
            query[:, :, s:e],
            key[:, :, s:e],
            value[:, :, s:e],
            None,
            is_causal=True,
            **kwargs,
        )[0]
        for s, e in pairwise(bounds)
    ]
    return torch.cat(outs, dim=1), None


def register() -> str:
    """Make `ATTENTION` known to transformers (attention and its mask); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, packed_sdpa)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    return ATTENTION
