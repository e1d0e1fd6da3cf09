"""Really train a tiny random-weight Qwen3 on the CPU with every PEFT method.

Each method must memorise a small set (loss goes down) and its saved adapter, reloaded onto a
freshly loaded base, must reproduce the trained model's logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetune_api.trainer_config import parse_trainer_config
from kubetune_trainer.methods import load_adapter
from kubetune_trainer.train import RunOptions, fit

pytestmark = pytest.mark.integration

PAIRS = [
    (
        "用户：如何申请信用卡？\nAI助手：",
        "您可通过银行官网、手机APP或线下网点提交申请，需准备身份证、收入证明等材料。",
    ),
    (
        "User: How do I raise my credit limit?\nAssistant:",
        "Apply in the app under Card > Limit; we review within 3 days.",
    ),
    ("用户：信用卡丢了怎么办？\nAI助手：", "请立即拨打客服热线挂失，并申请补卡。"),
    (
        "User: What is the annual fee?\nAssistant:",
        "The standard card has no annual fee in the first year.",
    ),
    ("用户：账单日是哪天？\nAI助手：", "账单日为每月5日，还款日为每月25日。"),
    (
        "User: Can I pay in installments?\nAssistant:",
        "Yes, purchases over 500 can be split into 3, 6 or 12 payments.",
    ),
]


def write_jsonl(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text(
        "".join(json.dumps({"input": i, "target": t}, ensure_ascii=False) + "\n" for i, t in pairs),
        encoding="utf-8",
    )
    return path


def make_config(model_dir: Path, tmp: Path, method: dict[str, Any], **training: Any) -> Any:
    train = write_jsonl(tmp / "train.jsonl", PAIRS)
    raw = {
        "model": {"name": str(model_dir)},
        "dataset": {"train": {"path": str(train)}, "eval": {"path": str(train)}},
        "method": method,
        "training": {
            "epochs": 15,
            "microBatchSize": 3,
            "learningRate": 1e-2,
            "precision": "fp32",
            "gradientCheckpointing": False,
            "warmupRatio": 0.0,
            "dynamicBatching": "length-grouped",
            **training,
        },
        "output": {"path": str(tmp / "out")},
    }
    return parse_trainer_config(raw)


def first_batch_logits(model: torch.nn.Module, tokenizer: Any) -> torch.Tensor:
    enc = tokenizer([PAIRS[0][0] + PAIRS[0][1], PAIRS[1][0]], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc, use_cache=False).logits


@pytest.mark.parametrize(
    "method",
    [
        {"type": "lora", "rank": 8, "alpha": 16, "dropout": 0.0},
        {"type": "qlora", "rank": 8, "alpha": 16, "dropout": 0.0},
        {"type": "adapter", "bottleneckSize": 16, "dropout": 0.0},
        # 2,048 prefix parameters on the tiny model learn slowly: a higher rate, more epochs.
        {
            "type": "prefix-tuning",
            "numVirtualTokens": 16,
            "_training": {"learningRate": 0.1, "epochs": 40},
        },
    ],
    ids=lambda m: m["type"],
)
def test_method_memorises_and_reloads(
    method: dict[str, Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    method = dict(method)
    cfg = make_config(tiny_model_dir, tmp_path, method, **method.pop("_training", {}))
    model, summary = fit(cfg, RunOptions(device="cpu"))
    out = tmp_path / "out"
    assert (out / "summary.json").exists() and (out / "adapter" / "adapter_config.json").exists()

    first_loss = _first_logged_loss(summary)
    assert summary["metrics"]["eval_loss"] < 0.6 * first_loss, summary["metrics"]
    assert summary["trainable_fraction"] < 0.5

    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    trained = first_batch_logits(model.eval(), tokenizer)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    if method["type"] == "qlora":  # reload onto the same 4-bit base the adapter was trained on
        from kubetune_trainer.methods import load_base_model

        base = load_base_model(str(tiny_model_dir), cfg.method, dtype=torch.float32, device="cpu")
    reloaded = first_batch_logits(load_adapter(base, out / "adapter").eval(), tokenizer)
    assert torch.allclose(trained, reloaded, atol=1e-4), (trained - reloaded).abs().max()


def _first_logged_loss(summary: dict[str, Any]) -> float:
    return float(summary["first_loss"])
