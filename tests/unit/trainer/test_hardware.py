"""`precision: auto` and `gradientCheckpointing: auto` resolve from the hardware; explicit wins."""

from __future__ import annotations

from pathlib import Path

import torch

from kubetune_api import TrainerConfig
from kubetune_api.memory import QWEN3_SHAPES, checkpointing_needed
from kubetune_api.trainer_config import parse_trainer_config
from kubetune_trainer import hardware

CPU = torch.device("cpu")
SMALL_SHAPE = {
    "vocab_size": 2624,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
}


def _cfg(**training: object) -> TrainerConfig:
    return parse_trainer_config(
        {"model": {"name": "m"}, "dataset": {"train": {"path": "t.jsonl"}}, "training": training}
    )


def test_defaults_are_auto() -> None:
    t = _cfg().training
    assert t.precision == "auto" and t.gradient_checkpointing == "auto"


def test_cpu_bf16_only_with_amx() -> None:
    assert hardware.auto_precision(CPU, {"avx512f", "avx512_bf16"})[0] == "fp32"
    assert hardware.auto_precision(CPU, {"avx512_bf16", "amx_bf16", "amx_tile"})[0] == "bf16"


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n", encoding="utf-8")
    assert hardware.cpu_flags(info) == {"fpu", "avx2", "amx_bf16"}
    assert hardware.cpu_flags(tmp_path / "absent") == set()


def test_explicit_values_win() -> None:
    cfg = _cfg(precision="bf16", gradientCheckpointing=True)
    out, resolved = hardware.resolve_defaults(cfg, CPU, SMALL_SHAPE, 512)
    assert resolved == {} and out is cfg


def test_auto_resolves_and_says_why() -> None:
    out, resolved = hardware.resolve_defaults(_cfg(), CPU, SMALL_SHAPE, 512)
    expected = "bf16" if "amx_bf16" in hardware.cpu_flags() else "fp32"
    assert out.training.precision == expected == resolved["precision"]["value"]
    # A tiny model fits any machine that runs this test: checkpointing stays off.
    assert out.training.gradient_checkpointing is False
    assert "fits without it" in resolved["gradient_checkpointing"]["why"]
    assert "precision: auto -> " in hardware.describe(resolved)


def test_checkpointing_on_only_when_it_does_not_fit() -> None:
    cfg = _cfg(microBatchSize=1)
    shape = QWEN3_SHAPES["qwen3-8b"]
    assert checkpointing_needed(cfg, shape, 24 * 10**9, seq_len=2048) is True
    assert checkpointing_needed(cfg, shape, 10**12, seq_len=2048) is False
    assert checkpointing_needed(cfg, shape, None, seq_len=2048) is True
    prefix = parse_trainer_config(
        {
            "model": {"name": "m"},
            "dataset": {"train": {"path": "t.jsonl"}},
            "method": {"type": "prefix-tuning"},
        }
    )
    assert checkpointing_needed(prefix, shape, 1, seq_len=2048) is False
