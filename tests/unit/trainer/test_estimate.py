"""`kubetune estimate`: the model shape lookup, parameter counts against peft, the CLI.

The arithmetic itself is tested in tests/unit/api/test_memory.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubetune_api.memory import QWEN3_SHAPES, ModelShape, UnknownModelError, estimate_memory
from kubetune_api.trainer_config import TrainerConfig, parse_trainer_config
from kubetune_trainer.estimate import main, model_shape

QWEN3_8B = QWEN3_SHAPES["qwen3-8b"]


def cfg(name: str = "Qwen/Qwen3-8B", **sections: dict[str, Any]) -> TrainerConfig:
    raw: dict[str, Any] = {"model": {"name": name}, "dataset": {"train": {"path": "t.jsonl"}}}
    for key, value in sections.items():
        raw[key] = value
    return parse_trainer_config(raw)


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
    root = Path(__file__).parents[3]
    env = {"PYTHONPATH": f"{root / 'operator'}:{root / 'trainer_image'}"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]"
