"""`kubetune export --merge [--quantize int8|int4]` on a tiny Qwen3 trained on the CPU.

A LoRA run and a QLoRA run train once per module. The quantised exports are loaded back with
`load_quantized` (what the server calls), evaluated against the unquantised merge, and kept or
refused by the eval-loss delta; a corrupted export (scales x3 through the test hook) must be
refused. The QLoRA adapter must merge onto its NF4 base so the merged model reproduces the
trained one; merging onto the full-precision base (the old behaviour) must not. Sizes and
deltas print with `-s`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetune_api.trainer_config import parse_trainer_config
from kubetune_trainer.export import QuantizeOptions, export_merged, export_quantized, main
from kubetune_trainer.quantized import (
    META_FILE,
    QuantizedLinear,
    dequantize_weight,
    is_quantized_dir,
    load_quantized,
    quantize_model,
    quantize_weight,
    read_meta,
)
from kubetune_trainer.train import RunOptions, fit

pytestmark = pytest.mark.integration

PAIRS = [
    ("用户：如何申请信用卡？\nAI助手：", "您可通过银行官网、手机APP或线下网点提交申请。"),
    ("User: How do I raise my credit limit?\nAssistant:", "Apply in the app under Card > Limit."),
    ("用户：信用卡丢了怎么办？\nAI助手：", "请立即拨打客服热线挂失，并申请补卡。"),
    ("User: What is the annual fee?\nAssistant:", "No annual fee in the first year."),
    ("用户：账单日是哪天？\nAI助手：", "账单日为每月5日，还款日为每月25日。"),
    ("User: Can I pay in installments?\nAssistant:", "Yes, in 3, 6 or 12 payments."),
]


def train(model_dir: Path, tmp: Path, method: dict[str, Any]) -> tuple[torch.nn.Module, Path]:
    """Train `method` on PAIRS (eval = train) for 10 epochs; the model and its adapter folder."""
    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"input": i, "target": t}, ensure_ascii=False) + "\n" for i, t in PAIRS),
        encoding="utf-8",
    )
    cfg = parse_trainer_config(
        {
            "model": {"name": str(model_dir)},
            "dataset": {"train": {"path": str(data)}, "eval": {"path": str(data)}},
            "method": method,
            "training": {
                "epochs": 10,
                "microBatchSize": 3,
                "learningRate": 1e-2,
                "precision": "fp32",
                "gradientCheckpointing": False,
                "warmupRatio": 0.0,
            },
            "output": {"path": str(tmp / "out")},
        }
    )
    model, _ = fit(cfg, RunOptions(device="cpu", resume="never"))
    return model.eval(), tmp / "out" / "adapter"


def first_batch_logits(model: torch.nn.Module, tokenizer: Any) -> torch.Tensor:
    enc = tokenizer([PAIRS[0][0] + PAIRS[0][1], PAIRS[1][0]], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc, use_cache=False).logits


@pytest.fixture(scope="module")
def lora_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tiny_model_dir, tmp_path_factory.mktemp("lora"), {"type": "lora", "rank": 8})[1]


def test_int8_layout_and_error() -> None:
    torch.manual_seed(0)
    weight = torch.randn(16, 64)
    q, scales, mins = quantize_weight(weight, 8, None)
    assert q.dtype == torch.int8 and scales.shape == (16,) and mins is None
    assert q.abs().amax(dim=1).eq(127).all()  # each row's largest weight maps to 127
    restored = dequantize_weight(q, scales, mins, torch.float32)
    assert ((restored - weight).abs() <= scales.float()[:, None] * 0.51).all()


def test_int4_packing_and_error() -> None:
    weight = torch.arange(8, dtype=torch.float32).repeat(2, 1)  # groups of 4: 0..3 and 4..7
    q, scales, mins = quantize_weight(weight, 4, 4)
    assert q.shape == (2, 4) and scales.shape == mins.shape == (2, 2)  # type: ignore[union-attr]
    low, high = q & 0x0F, q >> 4
    assert torch.equal(low[0], torch.tensor([0, 10, 0, 10], dtype=torch.uint8))  # even columns
    assert torch.equal(high[0], torch.tensor([5, 15, 5, 15], dtype=torch.uint8))
    assert torch.allclose(dequantize_weight(q, scales, mins, torch.float32), weight, atol=1e-2)
    torch.manual_seed(0)
    noise = torch.randn(32, 128)
    q, scales, mins = quantize_weight(noise, 4, 32)
    rel = (dequantize_weight(q, scales, mins, torch.float32) - noise).norm() / noise.norm()
    assert rel < 0.09


def test_group_size_and_format_errors(tmp_path: Path) -> None:
    layer = torch.nn.Sequential(torch.nn.Linear(64, 8))
    model = torch.nn.Module()
    model.layers = layer
    with pytest.raises(
        ValueError, match=r"--group-size 48 does not divide in_features 64 of layers\.0"
    ):
        quantize_model(model, 4, 48)
    with pytest.raises(ValueError, match="even number >= 2 for int4, got 3"):
        quantize_model(model, 4, 3)
    (tmp_path / META_FILE).write_text(json.dumps({"format": "kubetune-weight-only", "version": 9}))
    with pytest.raises(ValueError, match="version 1, got 'kubetune-weight-only' version 9"):
        read_meta(tmp_path)


def export(adapter: Path, out: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["--adapter", str(adapter), "--merge", "--out", str(out), *args])
    kept = out if out.exists() else out.with_name(out.name + ".rejected")
    return code, json.loads((kept / "export_report.json").read_text())


@pytest.mark.parametrize(
    ("quantize", "args", "max_delta"),
    [("int8", [], 0.05), ("int4", ["--group-size", "32"], 0.5)],
)
def test_quantized_export_loads_shrinks_and_stays_close(
    lora_adapter: Path, tmp_path: Path, quantize: str, args: list[str], max_delta: float
) -> None:
    out = tmp_path / quantize
    code, report = export(
        lora_adapter, out, "--quantize", quantize, "--max-eval-delta", str(max_delta), *args
    )
    print(
        f"\n{quantize}: {report['exported_bytes']:,} B vs {report['reference_bytes']:,} B "
        f"({report['size_ratio']}x); projections {report['linear_reference_bytes']:,} -> "
        f"{report['linear_exported_bytes']:,} B; eval loss {report['reference_eval']['eval_loss']}"
        f" -> {report['exported_eval']['eval_loss']} (delta {report['eval_loss_delta']:+.4f}), "
        f"accuracy {report['reference_eval']['accuracy']} -> {report['exported_eval']['accuracy']}"
    )
    assert code == 0 and report["accepted"] and is_quantized_dir(out)
    assert report["exported_bytes"] < report["reference_bytes"]
    ratio = report["linear_reference_bytes"] / report["linear_exported_bytes"]
    assert ratio > (3.5 if quantize == "int8" else 5.5)  # fp32 -> int8 (+ scales) / int4
    assert abs(report["eval_loss_delta"]) <= max_delta
    model = load_quantized(out)
    assert sum(isinstance(m, QuantizedLinear) for m in model.modules()) == 2 * 7
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer(PAIRS[0][0], return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 4


def test_int8_logits_close_to_the_merged_model(lora_adapter: Path, tmp_path: Path) -> None:
    merged_dir = export_merged(lora_adapter, tmp_path / "merged")
    opts = QuantizeOptions("int8", eval_path=None, allow_degraded=True)
    export_quantized(lora_adapter, tmp_path / "int8", opts)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    merged = first_batch_logits(AutoModelForCausalLM.from_pretrained(merged_dir).eval(), tokenizer)
    quantized = first_batch_logits(load_quantized(tmp_path / "int8"), tokenizer)
    rel = (quantized - merged).norm() / merged.norm()
    assert rel < 0.05, rel  # 2.5% on this tiny random-weight model


def test_corrupt_export_is_refused(lora_adapter: Path, tmp_path: Path) -> None:
    out = tmp_path / "broken"
    code, report = export(lora_adapter, out, "--quantize", "int8", "--inject-fault", "scale:3")
    assert code == 1 and not report["accepted"] and not out.exists()
    assert (tmp_path / "broken.rejected" / "model.safetensors").is_file()
    assert report["eval_loss_delta"] > 0.05 and "max-eval-delta" in report["reason"]
    code, report = export(
        lora_adapter,
        tmp_path / "kept",
        "--quantize",
        "int8",
        "--inject-fault",
        "scale:3",
        "--allow-degraded",
    )
    assert code == 0 and report["accepted"] and "allow-degraded" in report["reason"]


def test_bad_inputs_exit_2(lora_adapter: Path, tmp_path: Path) -> None:
    args = ["--adapter", str(lora_adapter), "--merge", "--quantize", "int4"]
    assert main([*args, "--group-size", "48", "--out", str(tmp_path / "a")]) == 2
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main([*args, "--out", str(tmp_path / "full")]) == 2
    assert main(["--adapter", str(tmp_path), "--merge", "--out", str(tmp_path / "b")]) == 2


def test_qlora_adapter_merges_onto_its_nf4_base(tiny_model_dir: Path, tmp_path: Path) -> None:
    method = {"type": "qlora", "rank": 8, "alpha": 16, "dropout": 0.0}
    trained, adapter = train(tiny_model_dir, tmp_path / "run", method)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    expected = first_batch_logits(trained, tokenizer)

    merged = export_merged(adapter, tmp_path / "merged")
    got = first_batch_logits(AutoModelForCausalLM.from_pretrained(merged).eval(), tokenizer)
    old_way = export_merged(adapter, tmp_path / "merged-full-base", method="lora")
    old = first_batch_logits(AutoModelForCausalLM.from_pretrained(old_way).eval(), tokenizer)
    error, old_error = (got - expected).abs().max(), (old - expected).abs().max()
    print(
        f"\nqlora merge: max logit error {error:.2e} (onto the full-precision base: {old_error:.2e})"
    )
    assert error < 1e-3 < old_error
