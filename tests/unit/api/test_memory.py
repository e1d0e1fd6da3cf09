"""The memory estimate's arithmetic: sizes, the Qwen3 table, parameter counts, sharding.

Its figures are checked against measured tensor bytes in
tests/integration/test_estimate_memory.py; here, the pieces and the contract. The CLI and the
comparisons with peft are in tests/unit/trainer/test_estimate.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_api.memory import GIB, QWEN3_SHAPES, estimate_memory, parse_size
from kubetune_api.trainer_config import TrainerConfig, parse_trainer_config

QWEN3_8B = QWEN3_SHAPES["qwen3-8b"]


def cfg(name: str = "Qwen/Qwen3-8B", **sections: dict[str, Any]) -> TrainerConfig:
    raw: dict[str, Any] = {"model": {"name": name}, "dataset": {"train": {"path": "t.jsonl"}}}
    for key, value in sections.items():
        raw[key] = value
    return parse_trainer_config(raw)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80GiB", 80 * GIB),
        ("80Gi", 80 * GIB),
        ("24GB", 24 * 10**9),
        ("24g", 24 * 10**9),
        ("512MiB", 512 * 2**20),
        ("1.5 TiB", int(1.5 * 2**40)),
        ("1000", 1000),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "80 GiBs", "-1GB", "8x"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="--gpu-memory"):
        parse_size(text)


def test_qwen3_table_parameter_counts() -> None:
    billions = {k: round(s.total_params / 1e9, 2) for k, s in QWEN3_SHAPES.items()}
    assert billions == {
        "qwen3-0.6b": 0.6,
        "qwen3-1.7b": 1.72,
        "qwen3-4b": 4.02,
        "qwen3-8b": 8.19,
        "qwen3-14b": 14.77,
        "qwen3-32b": 32.76,
    }


def test_qwen3_8b_lora_and_qlora_components() -> None:
    training = {"microBatchSize": 1, "lossChunkSize": 1024}
    lora = estimate_memory(cfg(method={"type": "lora"}, training=training), QWEN3_8B, seq_len=2048)
    qlora = estimate_memory(
        cfg(method={"type": "qlora"}, training=training), QWEN3_8B, seq_len=2048
    )
    assert lora.weights_bytes == QWEN3_8B.total_params * 2
    assert round(lora.weights_bytes / 1e9, 1) == 16.4
    assert lora.trainable_params == 21_823_488  # rank 8 on all seven projections
    assert lora.optimizer_bytes == 8 * lora.trainable_params
    assert lora.logits_bytes == 12 * 1024 * 151_936
    assert 5.5e9 < qlora.weights_bytes < 6.5e9
    assert qlora.activations_bytes == lora.activations_bytes
    assert lora.total_bytes - qlora.total_bytes > 10e9


def test_checkpointing_sharding_and_chunking_move_the_right_rows() -> None:
    base = {"microBatchSize": 2, "lossChunkSize": 1024}
    on = estimate_memory(cfg(training=base), QWEN3_8B, seq_len=2048)
    off = estimate_memory(cfg(training={**base, "gradientCheckpointing": False}), QWEN3_8B)
    assert off.activations_bytes > 8 * on.activations_bytes
    zero2 = estimate_memory(cfg(training={**base, "zeroStage": 2}), QWEN3_8B, world_size=4)
    assert zero2.weights_bytes == on.weights_bytes
    assert zero2.optimizer_bytes == pytest.approx(on.optimizer_bytes / 4, abs=1)
    zero3 = estimate_memory(cfg(training={**base, "zeroStage": 3}), QWEN3_8B, world_size=4)
    assert zero3.weights_bytes == pytest.approx(on.weights_bytes / 4, abs=1)
    small_chunk = estimate_memory(cfg(training={**base, "lossChunkSize": 256}), QWEN3_8B)
    assert small_chunk.logits_bytes == on.logits_bytes // 4


def test_prefix_tuning_is_estimated_without_checkpointing() -> None:
    asked = cfg(method={"type": "prefix-tuning"}, training={"gradientCheckpointing": True})
    est = estimate_memory(asked, QWEN3_8B)
    assert any("prefix-tuning turns gradient checkpointing off" in n for n in est.notes)
    assert not est.checkpointing
    auto = estimate_memory(cfg(method={"type": "prefix-tuning"}), QWEN3_8B, memory_limit=1)
    assert not auto.checkpointing  # auto never picks what the method cannot do


def test_auto_checkpointing_follows_the_memory_limit() -> None:
    lora = cfg(training={"microBatchSize": 1})
    assert estimate_memory(lora, QWEN3_8B, seq_len=2048, memory_limit=24 * 10**9).checkpointing
    assert not estimate_memory(lora, QWEN3_8B, seq_len=2048, memory_limit=10**12).checkpointing
