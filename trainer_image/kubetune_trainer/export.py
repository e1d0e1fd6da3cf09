"""`kubetune export`: merge a trained adapter into its base, optionally quantise it for CPU serving.

    kubetune export --adapter out/adapter --merge --out merged/ [--model BASE] [--dtype fp32]
    kubetune export --adapter out/adapter --merge --quantize int8|int4 [--group-size 64] \\
        --out edge/ [--eval-path eval.jsonl] [--max-eval-delta 0.05] [--allow-degraded]

The base is the adapter's `base_model_name_or_path` unless --model is given. An adapter trained
with QLoRA is merged onto the same NF4 base it trained against (the method comes from the run's
`summary.json` beside or inside the adapter folder, or --method), so the merged weights
reproduce the trained model; merging it onto the full-precision base would not. Prefix-tuning
and the bottleneck adapter cannot be folded into weights and are refused with a reason.

With --quantize the merged model's decoder projections are stored weight-only quantised
(`kubetune_trainer.quantized`: int8 per output channel, or int4 in groups) and the export is
checked before it is kept: eval loss and token accuracy of the quantised model, loaded back the
way the server loads it, against the unquantised merge, on --eval-path (default: the run's
eval file). A loss increase above --max-eval-delta (nats per token) refuses the export: exit 1
and the files go to `<out>.rejected/`, unless --allow-degraded. `export_report.json` records
sizes, both evaluations and the verdict. Exit codes: 0 written, 1 refused, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubetune_api.methods import METHODS

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
BITS = {"int8": 8, "int4": 4}
REPORT_FILE = "export_report.json"


@dataclass
class ExportReport:
    """What an export wrote and how the quantised model compares with the merged one."""

    out_dir: str
    quantize: str | None
    group_size: int | None
    reference_bytes: int  # the merged model's tensors in --dtype (tied weights once)
    exported_bytes: int  # the weights file written
    linear_reference_bytes: int = 0
    linear_exported_bytes: int = 0
    reference_eval: dict[str, float] = field(default_factory=dict)
    exported_eval: dict[str, float] = field(default_factory=dict)
    max_eval_delta: float | None = None
    accepted: bool = True
    reason: str = ""

    @property
    def size_ratio(self) -> float:
        return self.reference_bytes / max(self.exported_bytes, 1)

    @property
    def eval_loss_delta(self) -> float | None:
        if "eval_loss" not in self.exported_eval or "eval_loss" not in self.reference_eval:
            return None
        return self.exported_eval["eval_loss"] - self.reference_eval["eval_loss"]

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "size_ratio": round(self.size_ratio, 3),
            "eval_loss_delta": self.eval_loss_delta,
        }


def base_model_of(adapter_dir: Path) -> str:
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    return str(config["base_model_name_or_path"])


def run_summary(adapter_dir: Path) -> dict[str, Any]:
    """The training run's summary.json (beside or inside the adapter folder), or {}."""
    for candidate in (adapter_dir.parent / "summary.json", adapter_dir / "summary.json"):
        if candidate.is_file():
            data: dict[str, Any] = json.loads(candidate.read_text(encoding="utf-8"))
            return data
    return {}


def trained_method(adapter_dir: Path, override: str | None = None) -> tuple[str, str]:
    """(method type, precision) the adapter was trained with; lora/fp32 when unknown."""
    config = run_summary(adapter_dir).get("config", {})
    method = override or config.get("method", {}).get("type", "lora")
    return method, config.get("training", {}).get("precision", "fp32")


def load_merged(
    adapter_dir: Path, *, base: str | None = None, dtype: str = "fp32", method: str | None = None
) -> Any:
    """Base (NF4 for a QLoRA adapter) + adapter, merged, in `dtype`, on the CPU, eval mode."""
    import torch

    from kubetune_api.finetune import MethodSpec
    from kubetune_trainer.methods import load_adapter, load_base_model, merge_and_unload

    name = base or base_model_of(adapter_dir)
    kind, precision = trained_method(adapter_dir, method)
    quantized = kind in METHODS and METHODS[kind].quantized_base
    compute = torch.bfloat16 if quantized and precision == "bf16" else torch.float32
    spec = MethodSpec.model_validate({"type": kind}) if quantized else MethodSpec()
    model = load_base_model(name, spec, dtype=compute, device="cpu")
    merged = merge_and_unload(load_adapter(model, adapter_dir))
    return merged.to(getattr(torch, DTYPES[dtype])).eval()


def _tokenizer(adapter_dir: Path, name: str) -> Any:
    from transformers import AutoTokenizer

    has_own = (adapter_dir / "tokenizer_config.json").exists()
    return AutoTokenizer.from_pretrained(str(adapter_dir if has_own else name))


def export_merged(
    adapter_dir: Path,
    out_dir: Path,
    *,
    base: str | None = None,
    dtype: str = "fp32",
    method: str | None = None,
) -> Path:
    """Load base + adapter, merge, save model and tokenizer to out_dir (loads with from_pretrained)."""
    merged = load_merged(adapter_dir, base=base, dtype=dtype, method=method)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir)
    _tokenizer(adapter_dir, base or base_model_of(adapter_dir)).save_pretrained(out_dir)
    return out_dir


def tensor_bytes(model: Any, only_linears: bool = False) -> int:
    """Bytes of the model's tensors (shared storages once); optionally the decoder's Linears only."""
    from kubetune_trainer.quantized import QuantizedLinear, quantizable_linears

    if only_linears:
        modules: list[Any] = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
        modules = modules or list(quantizable_linears(model).values())
        tensors = [t for m in modules for t in [*m.parameters(), *m.buffers()]]
    else:
        tensors = [*model.parameters(), *model.buffers()]
    seen = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(seen.values())


def eval_examples(eval_path: Path, tokenizer: Any, dataset: dict[str, Any]) -> list[Any]:
    """Tokenized eval rows, with the training run's dataset settings when it had them."""
    from kubetune_api.finetune import DatasetSpec
    from kubetune_trainer.data import load_examples

    keys = ("format", "maxInputTokens", "maxTargetTokens", "onInvalidLine")
    spec = DatasetSpec.model_validate(
        {"train": {"path": str(eval_path)}, **{k: dataset[k] for k in keys if k in dataset}}
    )
    examples, _ = load_examples(eval_path, spec, tokenizer)
    return examples


def evaluate_model(model: Any, examples: list[Any], tokenizer: Any) -> dict[str, float]:
    """Eval loss, perplexity and token accuracy on the CPU."""
    import torch

    from kubetune_trainer.evaluate import evaluate

    metrics = evaluate(
        model,
        examples,
        micro_batch_size=4,
        pad_token_id=int(tokenizer.pad_token_id),
        device=torch.device("cpu"),
        autocast=nullcontext(),
    )
    return {k: round(v, 6) for k, v in metrics.items()}


@dataclass
class QuantizeOptions:
    """How to quantise and when to refuse."""

    quantize: str  # int8 | int4
    group_size: int = 64
    eval_path: Path | None = None
    max_eval_delta: float = 0.05
    allow_degraded: bool = False
    inject_fault: str | None = None  # "scale:FACTOR" multiplies every scale (tests the refusal)


def export_quantized(
    adapter_dir: Path,
    out_dir: Path,
    opts: QuantizeOptions,
    *,
    base: str | None = None,
    dtype: str = "fp32",
    method: str | None = None,
) -> ExportReport:
    """Merge, quantise, write, load back and evaluate; keep `out_dir` or move it aside."""
    from kubetune_trainer.quantized import quantize_model, save_quantized

    _check_out_dir(out_dir)
    name = base or base_model_of(adapter_dir)
    tokenizer = _tokenizer(adapter_dir, name)
    examples = _eval_set(adapter_dir, opts, tokenizer)
    model = load_merged(adapter_dir, base=base, dtype=dtype, method=method)
    reference_eval = evaluate_model(model, examples, tokenizer) if examples else {}
    reference_bytes, linear_ref = tensor_bytes(model), tensor_bytes(model, only_linears=True)
    bits = BITS[opts.quantize]
    group = opts.group_size if bits == 4 else None
    modules = quantize_model(model, bits, group)
    _maybe_corrupt(model, opts.inject_fault)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    weights = save_quantized(model, staging, bits=bits, group_size=group, modules=modules)
    tokenizer.save_pretrained(str(staging))
    report = ExportReport(
        out_dir=str(out_dir),
        quantize=opts.quantize,
        group_size=group,
        reference_bytes=reference_bytes,
        exported_bytes=weights.stat().st_size,
        linear_reference_bytes=linear_ref,
        linear_exported_bytes=tensor_bytes(model, only_linears=True),
        reference_eval=reference_eval,
        max_eval_delta=opts.max_eval_delta,
    )
    _judge(report, staging, examples, tokenizer, opts)
    return _finish(report, staging, out_dir)


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"--out {out_dir} exists and is not empty")


def _eval_set(adapter_dir: Path, opts: QuantizeOptions, tokenizer: Any) -> list[Any]:
    config = run_summary(adapter_dir).get("config", {})
    dataset = config.get("dataset", {})
    path = opts.eval_path or _run_eval_path(dataset)
    if path is None:
        if opts.allow_degraded:
            return []
        raise ValueError(
            "--eval-path: no eval data to check the quantised model against (the run had none); "
            "give --eval-path, or --allow-degraded to export unchecked"
        )
    return eval_examples(path, tokenizer, dataset)


def _run_eval_path(dataset: dict[str, Any]) -> Path | None:
    source = dataset.get("eval") or {}
    path = source.get("path") or (source.get("uri") or "").removeprefix("file://") or None
    return Path(path) if path and Path(path).is_file() else None


def _maybe_corrupt(model: Any, fault: str | None) -> None:
    """Test hook: `scale:F` multiplies every quantisation scale by F before saving."""
    if not fault:
        return
    kind, _, factor = fault.partition(":")
    if kind != "scale":
        raise ValueError(f"--inject-fault must be scale:FACTOR, got {fault!r}")
    from kubetune_trainer.quantized import QuantizedLinear

    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            module.scales.mul_(float(factor))


def _judge(
    report: ExportReport,
    staging: Path,
    examples: list[Any],
    tokenizer: Any,
    opts: QuantizeOptions,
) -> None:
    """Evaluate the written checkpoint as the server loads it; accept or refuse."""
    from kubetune_trainer.quantized import load_quantized

    if not examples:
        report.reason = "not evaluated (--allow-degraded without eval data)"
        return
    report.exported_eval = evaluate_model(load_quantized(staging), examples, tokenizer)
    delta = report.eval_loss_delta
    assert delta is not None
    if delta > opts.max_eval_delta:
        report.accepted = opts.allow_degraded
        report.reason = (
            f"eval loss rose by {delta:.4f} nats/token (> --max-eval-delta {opts.max_eval_delta})"
            + ("; kept because of --allow-degraded" if opts.allow_degraded else "")
        )
    else:
        report.reason = f"eval loss delta {delta:+.4f} <= {opts.max_eval_delta}"


def _finish(report: ExportReport, staging: Path, out_dir: Path) -> ExportReport:
    target = out_dir if report.accepted else out_dir.with_name(out_dir.name + ".rejected")
    if not report.accepted:
        report.out_dir = str(target)
    (staging / REPORT_FILE).write_text(
        json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return report


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--adapter",
        required=True,
        type=Path,
        help="adapter folder (kubetune train's <out>/adapter)",
    )
    p.add_argument("--out", required=True, type=Path, help="folder for the exported model")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the weights")
    p.add_argument("--model", default=None, help="base model (default: the adapter's)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="unquantised tensors")
    p.add_argument(
        "--method",
        choices=[name for name, traits in METHODS.items() if traits.mergeable],
        default=None,
        help="how the adapter was trained "
        "(default: from the run's summary.json; qlora merges onto the NF4 base)",
    )
    p.add_argument("--quantize", choices=sorted(BITS), default=None, help="weight-only quantise")
    p.add_argument("--group-size", type=int, default=64, help="int4 group size (default 64)")
    p.add_argument("--eval-path", type=Path, default=None, help="eval JSONL for the check")
    p.add_argument(
        "--max-eval-delta", type=float, default=0.05, help="largest eval loss rise (nats/token)"
    )
    p.add_argument("--allow-degraded", action="store_true", help="keep a degraded export")
    p.add_argument("--inject-fault", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None, prog: str = "kubetune export") -> int:
    """Exit 0 written, 1 refused (eval delta too large), 2 bad input."""
    args = build_parser(prog).parse_args(argv)
    if not args.merge:
        print("error: --merge is required: export writes a merged model")
        return 2
    try:
        if args.quantize is None:
            out = export_merged(
                args.adapter, args.out, base=args.model, dtype=args.dtype, method=args.method
            )
            print(f"wrote merged model to {out}")
            return 0
        opts = QuantizeOptions(
            args.quantize,
            args.group_size,
            args.eval_path,
            args.max_eval_delta,
            args.allow_degraded,
            args.inject_fault,
        )
        report = export_quantized(
            args.adapter, args.out, opts, base=args.model, dtype=args.dtype, method=args.method
        )
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as err:
        print(f"error: {err}")
        return 2
    _print_report(report)
    return 0 if report.accepted else 1


def _print_report(report: ExportReport) -> None:
    mib = 2**20
    print(
        f"{report.quantize}: {report.exported_bytes / mib:.2f} MiB written vs "
        f"{report.reference_bytes / mib:.2f} MiB unquantised ({report.size_ratio:.2f}x smaller; "
        f"projections {report.linear_reference_bytes / mib:.2f} -> "
        f"{report.linear_exported_bytes / mib:.2f} MiB)"
    )
    for label, metrics in (("merged", report.reference_eval), ("exported", report.exported_eval)):
        if metrics:
            print(
                f"{label:>9}: eval loss {metrics['eval_loss']:.4f}, "
                f"accuracy {metrics['accuracy']:.4f}"
            )
    verdict = "kept" if report.accepted else "REFUSED"
    print(f"{verdict} in {report.out_dir}: {report.reason}")
