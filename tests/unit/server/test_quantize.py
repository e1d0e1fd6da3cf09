"""INT8 modules of the server: accuracy, batch invariance, tied weights and size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from kubetune_server.quantize import (
    Int8Embedding,
    Int8Linear,
    model_size_bytes,
    quantize_cpu_int8,
    quantize_rows,
)


def test_quantize_rows_round_trips_within_half_a_step() -> None:
    weight = torch.randn(32, 64)
    q, scale = quantize_rows(weight)
    assert q.dtype == torch.int8 and scale.shape == (32,)
    assert (q.float() * scale[:, None] - weight).abs().max() <= scale.max() / 2 + 1e-6


def test_int8_linear_is_close_to_fp32() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(128, 96, bias=True)
    x = torch.randn(5, 7, 128)
    expected, got = linear(x), Int8Linear.from_linear(linear)(x)
    assert got.shape == expected.shape
    relative = (got - expected).norm() / expected.norm()
    assert relative < 0.02, relative


def test_int8_linear_rows_do_not_depend_on_their_batch_mates() -> None:
    """Per-row activation scales + integer accumulation: bit-identical alone or batched."""
    torch.manual_seed(0)
    layer = Int8Linear.from_linear(nn.Linear(256, 64))
    rows = torch.randn(9, 256)
    rows[3] *= 100  # an outlier row would change a per-tensor scale for everyone
    batched = layer(rows)
    for i in range(rows.shape[0]):
        assert torch.equal(layer(rows[i : i + 1])[0], batched[i])


def test_int8_embedding_looks_up_dequantized_rows() -> None:
    emb = nn.Embedding(50, 16)
    q, s = quantize_rows(emb.weight)
    ids = torch.tensor([[1, 2], [49, 0]])
    got = Int8Embedding(q, s, torch.float32)(ids)
    assert torch.allclose(got, emb(ids), atol=float(s.max()))


def test_quantized_qwen3_shares_the_tied_matrix_and_shrinks(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 99, 3]])
    with torch.no_grad():
        before_logits = model(ids).logits
    before = model_size_bytes(model)
    quantize_cpu_int8(model)
    assert not any(isinstance(m, nn.Linear | nn.Embedding) for m in model.modules())
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    assert isinstance(head, Int8Linear) and isinstance(emb, Int8Embedding)
    assert head.qweight.data_ptr() == emb.qweight.data_ptr()  # tied: one int8 matrix
    assert model_size_bytes(model) < 0.3 * before
    with torch.no_grad():
        after_logits = model(ids).logits
    cosine = torch.nn.functional.cosine_similarity(
        before_logits.flatten(), after_logits.flatten(), 0
    )
    assert cosine > 0.99, cosine


def test_model_size_counts_shared_storage_once() -> None:
    a = nn.Linear(10, 10, bias=False)
    b = nn.Linear(10, 10, bias=False)
    b.weight = a.weight
    assert model_size_bytes(nn.Sequential(a, b)) == 10 * 10 * 4


@pytest.mark.parametrize("device", ["meta"])
def test_quantize_model_refuses_other_devices(device: str) -> None:
    from kubetune_server.quantize import quantize_model

    with pytest.raises(ValueError, match="cpu or cuda"):
        quantize_model(nn.Linear(2, 2), torch.device(device))
