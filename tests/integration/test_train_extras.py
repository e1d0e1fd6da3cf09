"""Training extras that live in the loop: repetition-penalty (unlikelihood) loss and multi-task
mixtures. Each test compares against the same run without the feature, so it fails if the
feature does nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune_api.trainer_config import parse_trainer_config
from kubetune_trainer.prepare import mixture_probabilities
from kubetune_trainer.train import RunOptions, fit

pytestmark = pytest.mark.integration

QA = [
    (f"用户：第{i}号问题，信用卡{w}怎么办？\nAI助手：", f"请拨打客服热线办理{w}业务，编号{i}。")
    for i, w in enumerate(["挂失", "补卡", "分期", "提额", "销卡", "激活", "还款", "积分"])
]
SUMMARY = [
    (f"Summarize: the customer asked about {w} on card {i}.", f"Card {i}: {w}.")
    for i, w in enumerate(["fees", "limits", "travel", "points", "fraud", "cash", "bills", "rates"])
]


def write(path: Path, pairs: list[tuple[str, str]]) -> str:
    path.write_text(
        "".join(json.dumps({"input": a, "target": b}, ensure_ascii=False) + "\n" for a, b in pairs),
        encoding="utf-8",
    )
    return str(path)


def base_raw(model: Path, out: Path, **training: Any) -> dict[str, Any]:
    return {
        "model": {"name": str(model)},
        "method": {"type": "lora", "rank": 8, "dropout": 0.0},
        "training": {
            "epochs": 6,
            "microBatchSize": 4,
            "learningRate": 1e-2,
            "precision": "fp32",
            "gradientCheckpointing": False,
            "warmupRatio": 0.0,
            **training,
        },
        "output": {"path": str(out)},
    }


def repeat_rate(
    model: torch.nn.Module, tokenizer: Any, prompts: list[str], new_tokens: int = 24
) -> float:
    """Share of generated tokens that already occurred earlier in the same generation."""
    repeats = total = 0
    for prompt in prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        gen = out[0, ids.shape[1] :].tolist()
        repeats += sum(1 for t, tok in enumerate(gen) if tok in gen[:t])
        total += len(gen)
    return repeats / total


def test_repetition_penalty_lowers_repeat_rate(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    train = write(tmp_path / "train.jsonl", QA + SUMMARY)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [a for a, _ in QA[:4] + SUMMARY[:4]]
    rates = {}
    for coef in (0.0, 3.0):
        raw = base_raw(tiny_model_dir, tmp_path / f"out-{coef}", repetitionPenalty=coef)
        raw["dataset"] = {"train": {"path": train}}
        model, _ = fit(parse_trainer_config(raw), RunOptions(device="cpu", resume="never"))
        rates[coef] = repeat_rate(model.eval(), tokenizer, prompts)
    print("repeat rate without / with unlikelihood:", rates)
    assert rates[3.0] < 0.8 * rates[0.0], rates


def test_mixture_probabilities_follow_weights_and_temperature() -> None:
    sizes = {"a": 100, "b": 100}
    assert mixture_probabilities(sizes, {"a": 3.0, "b": 1.0}, 1.0) == pytest.approx(
        {"a": 0.75, "b": 0.25}
    )
    flat = mixture_probabilities(sizes, {"a": 3.0, "b": 1.0}, 100.0)
    assert flat["a"] == pytest.approx(0.5, abs=0.01)


def test_mixture_weights_steer_per_task_eval_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    files = {
        name: (
            write(tmp_path / f"{name}-train.jsonl", rows),
            write(tmp_path / f"{name}-eval.jsonl", rows),
        )
        for name, rows in (("qa", QA), ("summary", SUMMARY))
    }
    results = {}
    for favoured in ("qa", "summary"):
        raw = base_raw(tiny_model_dir, tmp_path / f"out-{favoured}", epochs=4)
        raw["dataset"] = {
            "mixture": [
                {
                    "name": name,
                    "task": name,
                    "train": {"path": tr},
                    "eval": {"path": ev},
                    "weight": 20.0 if name == favoured else 0.2,
                }
                for name, (tr, ev) in files.items()
            ]
        }
        _, summary = fit(parse_trainer_config(raw), RunOptions(device="cpu", resume="never"))
        metrics = summary["metrics"]
        assert {
            "eval_loss/qa",
            "eval_loss/summary",
            "accuracy/qa",
            "accuracy/summary",
        } <= metrics.keys()
        assert set(summary["data"]) == {"train/qa", "train/summary", "eval/qa", "eval/summary"}
        results[favoured] = metrics
    # each task is learnt better when it is the favoured one
    assert results["qa"]["eval_loss/qa"] < results["summary"]["eval_loss/qa"]
    assert results["summary"]["eval_loss/summary"] < results["qa"]["eval_loss/summary"]


def test_synonym_augmentation_adds_counted_rows_to_train_only(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    train = write(tmp_path / "train.jsonl", QA + SUMMARY)
    evals = write(tmp_path / "eval.jsonl", QA[:2])
    synonyms = tmp_path / "synonyms.json"
    synonyms.write_text(
        json.dumps(
            {"信用卡": ["贷记卡"], "customer": ["client"], "card": ["account"]}, ensure_ascii=False
        ),
        encoding="utf-8",
    )
    raw = base_raw(tiny_model_dir, tmp_path / "out", epochs=1)
    raw["dataset"] = {
        "train": {"path": train},
        "eval": {"path": evals},
        "augmentation": {
            "synonyms": {"dictionary": str(synonyms), "probability": 1.0},
            "maxRows": 6,
        },
    }
    _, summary = fit(parse_trainer_config(raw), RunOptions(device="cpu", resume="never"))
    assert summary["data"]["augmented"]["kept"] == 6
    assert summary["data"]["eval"]["kept"] == 2  # eval untouched
    added = (tmp_path / "out" / "augmented_train.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(added) == 6 and all('"_augmented": "synonyms"' in line for line in added)
