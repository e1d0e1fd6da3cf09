"""The memory estimate's arithmetic: sizes, model shapes, parameter counts, sharding, the CLI.

Its figures are checked against measured tensor bytes in
tests/integration/test_estimate_memory.py; here, the pieces and the contract.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubetune_api.trainer_config import TrainerConfig, parse_trainer_config
from kubetune_trainer.estimate import (
    GIB,
    QWEN3_SHAPES,
    ModelShape,
    UnknownModelError,
    estimate_memory,
    main,
    model_shape,
    parse_size,
)

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


def test_table_matches_the_8b_shape_the_gpu_bench_builds() -> None:
    from kubetune_trainer.tiny_model import qwen3_config

    assert ModelShape.from_config(qwen3_config("8b-shape", 151_936).to_dict()) == QWEN3_8B


def test_model_shape_lookup(tiny_model_dir: Path) -> None:
    assert model_shape("Qwen/Qwen3-8B") == model_shape("qwen3-8b-base") == QWEN3_8B
    tiny = model_shape(str(tiny_model_dir))
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert (tiny.hidden_size, tiny.vocab_size) == (config["hidden_size"], config["vocab_size"])
    with pytest.raises(UnknownModelError, match=r"'meta/llama'.* not a known Qwen3 id"):
        model_shape("meta/llama")


@pytest.mark.parametrize(
    "method",
    [
        {"type": "lora", "rank": 4, "targetModules": ["q_proj", "down_proj"]},
        {"type": "lora", "rank": 8},
        {"type": "adapter", "bottleneckSize": 16},
        {"type": "prefix-tuning", "numVirtualTokens": 5},
    ],
)
def test_trainable_params_match_peft(tiny_model_dir: Path, method: dict[str, Any]) -> None:
    import torch

    from kubetune_api.finetune import MethodSpec
    from kubetune_trainer.methods import apply_method, load_base_model

    spec = MethodSpec.model_validate(method)
    base = load_base_model(str(tiny_model_dir), spec, dtype=torch.float32)
    _, info = apply_method(base, spec, gradient_checkpointing=False)
    est = estimate_memory(cfg(str(tiny_model_dir), method=method), model_shape(str(tiny_model_dir)))
    assert est.trainable_params == info.trainable_params


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
    est = estimate_memory(cfg(method={"type": "prefix-tuning"}), QWEN3_8B)
    assert any("prefix-tuning turns gradient checkpointing off" in n for n in est.notes)


def write_config(tmp_path: Path, **training: Any) -> Path:
    path = tmp_path / "cfg.yaml"
    raw = {
        "model": {"name": "Qwen/Qwen3-8B"},
        "dataset": {"train": {"path": "t.jsonl"}},
        "training": {"microBatchSize": 1, **training},
    }
    path.write_text(json.dumps(raw))
    return path


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(write_config(tmp_path))
    assert main(["--config", path, "--gpu-memory", "80GiB", "--seq-len", "2048"]) == 0
    out = capsys.readouterr().out
    assert "weights" in out and "logits (fused loss chunk)" in out and "fits:" in out
    assert main(["--config", path, "--gpu-memory", "16GB"]) == 1
    assert "does NOT fit" in capsys.readouterr().out
    assert main(["--config", path, "--gpu-memory", "lots"]) == 2
    assert main(["--config", path, "--gpu-memory", "80GiB", "--model", "nowhere/x"]) == 2
    assert "not a known Qwen3 id" in capsys.readouterr().out
    assert main(["--config", str(tmp_path / "missing.yaml"), "--gpu-memory", "8GB"]) == 2


def test_importable_without_torch() -> None:
    code = (
        "import sys; import kubetune_trainer.estimate as e; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    root = Path(__file__).parents[2]
    env = {"PYTHONPATH": f"{root / 'operator'}:{root / 'trainer_image'}"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]"
