"""Trainer throughput: Kubetune's loop vs the strongest plain baselines, same model and data.

    .venv/bin/python bench/train_throughput.py [--vocab small|qwen3] [--rows 2000] [--repeats 2]

One run builds a tiny random-weight Qwen3 (`--vocab small`: 2,624 tokens, the transformer body
dominates; `qwen3`: the genuine 151,936, the output layer dominates), writes a skewed-length
input/target dataset (log-normal lengths) and trains one epoch of LoRA r=16 (all projections),
micro-batch 8, on the CPU. Every contestant runs in its own process (peak RSS is its own, from
wait4), in rounds A B C ... A B C (`--repeats`), so a shared machine's load hits all alike; the
table shows medians over the rounds:
  - padded (reference): `transformers.Trainer` + peft, padding to the longest row of each batch;
  - Trainer + group_by_length: the same with `group_by_length=True`;
  - ms-swift: `swift sft` at its fastest CPU setting (`--group_by_length true
    --gradient_checkpointing false --torch_dtype float32`; its packing and padding_free need
    flash-attn), installed by this script from PyPI into its own virtual environment under
    ~/.cache/kubetune/bench-venvs (it pins its own transformers); `--no-swift` skips it;
  - kubetune seed CLI: `swift-finetune --config` with only the seed keys (every other setting
    our default, so `precision: auto`, `gradientCheckpointing: auto`, length-grouped);
  - kubetune packing / length-grouped / none: explicit fp32, no checkpointing.
Training seconds are each framework's own training-loop time (Trainer's `train_runtime`,
Kubetune's `train_seconds`), so start-up (imports, tokenization, model load) is left out. Real
(non-pad) tokens are counted by our collators; ms-swift's are taken as the Trainer's (same rows,
same chat template). Targets (issue 14): >= 1.5x ms-swift in training seconds and >= 1.5x
Trainer + group_by_length in real tokens/s, padding <= 3%, peak RSS <= ms-swift's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SWIFT_VERSION = "4.6.0"
SWIFT_VENV = Path.home() / ".cache" / "kubetune" / "bench-venvs" / f"ms-swift-{SWIFT_VERSION}"
LORA_RANK, LORA_ALPHA, LEARNING_RATE = 16, 32, 1e-4
WORDS_EN = [
    "card",
    "limit",
    "payment",
    "bill",
    "statement",
    "interest",
    "cash",
    "points",
    "travel",
    "fee",
    "account",
    "branch",
]
WORDS_ZH = list("信用卡额度账单还款利息积分分期年费网点申请挂失补卡客服")


def make_dataset(path: Path, rows: int, seed: int) -> None:
    """Log-normal lengths: a long tail of long answers is what makes padding expensive."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            n_in = max(3, int(rng.lognormvariate(2.3, 0.6)))
            n_out = max(2, int(rng.lognormvariate(2.8, 0.9)))
            words = WORDS_ZH if i % 2 else WORDS_EN
            sep = "" if i % 2 else " "
            prompt = sep.join(rng.choice(words) for _ in range(n_in))
            target = sep.join(rng.choice(words) for _ in range(min(n_out, 400)))
            f.write(json.dumps({"input": prompt, "target": target}, ensure_ascii=False) + "\n")


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    if args.worker == "kubetune":
        return run_kubetune(args)
    return run_baseline(args, group_by_length=args.worker == "trainer-grouped")


def run_kubetune(args: argparse.Namespace) -> dict[str, Any]:
    from kubetune_api.trainer_config import parse_trainer_config
    from kubetune_trainer.train import RunOptions, run

    if args.mode == "seed":  # what `swift-finetune --config` reads: the seed's flat keys only
        raw: dict[str, Any] = {
            "model_name": args.model,
            "framework": "ms-swift",
            "peft_method": "lora",
            "lora_rank": LORA_RANK,
            "batch_size": args.micro,
            "learning_rate": LEARNING_RATE,
            "epochs": 1,
        }
        cfg = parse_trainer_config(raw, train_path=args.data, output_dir=args.out)
    else:
        cfg = parse_trainer_config(
            {
                "model": {"name": args.model},
                "dataset": {"train": {"path": args.data}},
                "method": {"type": "lora", "rank": LORA_RANK, "alpha": LORA_ALPHA},
                "training": {
                    "epochs": 1,
                    "microBatchSize": args.micro,
                    "learningRate": LEARNING_RATE,
                    "precision": "fp32",
                    "gradientCheckpointing": False,
                    "dynamicBatching": args.mode,
                    "maxTokensPerBatch": args.max_tokens,
                    "loggingSteps": 1000,
                },
                "output": {"path": args.out},
            }
        )
    summary = run(cfg, RunOptions(device="cpu", resume="never"))
    resolved = {k: v["value"] for k, v in summary.get("resolved_defaults", {}).items()}
    return {
        "real_tokens": summary["real_tokens"],
        "seconds": summary["train_seconds"],
        "padding_fraction": summary["padding_fraction"],
        "steps": summary["steps"],
        "resolved": resolved,
    }


def _features(tokenizer: Any, data: str) -> list[dict[str, list[int]]]:
    rows = [json.loads(line) for line in Path(data).read_text(encoding="utf-8").splitlines()]
    feats = []
    for row in rows:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["input"]}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t_ids = tokenizer(row["target"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        feats.append(
            {
                "input_ids": p_ids + t_ids,
                "attention_mask": [1] * (len(p_ids) + len(t_ids)),
                "labels": [-100] * len(p_ids) + t_ids,
            }
        )
    return feats


def run_baseline(args: argparse.Namespace, *, group_by_length: bool) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from kubetune_api.finetune import DEFAULT_TARGET_MODULES

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    feats = _features(tokenizer, args.data)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=LORA_RANK,
            lora_alpha=LORA_ALPHA,
            lora_dropout=0.05,  # the default of Kubetune's seed CLI and of ms-swift
            task_type="CAUSAL_LM",
            target_modules=list(DEFAULT_TARGET_MODULES),  # the same modules Kubetune's LoRA wraps
        ),
    )
    counter = {"real": 0, "padded": 0}

    class Count(DataCollatorForSeq2Seq):
        def __call__(self, features: Any, return_tensors: Any = None) -> Any:
            batch = super().__call__(features, return_tensors)
            counter["real"] += int(batch["attention_mask"].sum())
            counter["padded"] += int(batch["attention_mask"].numel())
            return batch

    targs = TrainingArguments(
        output_dir=args.out,
        per_device_train_batch_size=args.micro,
        num_train_epochs=1,
        learning_rate=LEARNING_RATE,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=42,
        # transformers 5: `train_sampling_strategy` replaces 4.x's `group_by_length=True`
        train_sampling_strategy="group_by_length" if group_by_length else "random",
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=feats,
        data_collator=Count(tokenizer, padding="longest"),
    )
    out = trainer.train()
    return {
        "real_tokens": counter["real"],
        "seconds": float(out.metrics["train_runtime"]),
        "padding_fraction": 1 - counter["real"] / max(counter["padded"], 1),
        "steps": trainer.state.global_step,
    }


def ensure_swift() -> Path:
    """ms-swift in its own venv (PyPI); torch pinned to ours so uv's warm cache serves it."""
    python = SWIFT_VENV / "bin" / "python"
    if (SWIFT_VENV / "bin" / "swift").exists():
        return python
    import torch

    SWIFT_VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["uv", "venv", "-q", "--python", sys.executable, str(SWIFT_VENV)], check=True)
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    pkgs = [f"ms-swift=={SWIFT_VERSION}", torch_pin]
    subprocess.run(["uv", "pip", "install", "-q", "--python", str(python), *pkgs], check=True)
    return python


def swift_dataset(data: Path, out: Path) -> Path:
    """The bench rows as ms-swift `messages` rows (its template adds the chat markup)."""
    with out.open("w", encoding="utf-8") as f:
        for line in data.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            messages = [
                {"role": "user", "content": row["input"]},
                {"role": "assistant", "content": row["target"]},
            ]
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return out


def swift_command(python: Path, model: Path, data: Path, out: Path, micro: int) -> list[str]:
    return [
        str(python), "-m", "swift.cli.sft",
        "--model", str(model), "--model_type", "qwen3", "--template", "qwen3_nothinking",
        "--dataset", str(data),
        # ms-swift 4.x: --tuner_type (3.x called it --train_type); one micro-batch per optimizer
        # step, as every other contestant (it would pick 2 accumulation steps itself)
        "--tuner_type", "lora", "--lora_rank", str(LORA_RANK), "--lora_alpha", str(LORA_ALPHA),
        "--gradient_accumulation_steps", "1",
        "--target_modules", "all-linear", "--per_device_train_batch_size", str(micro),
        "--num_train_epochs", "1", "--learning_rate", str(LEARNING_RATE),
        "--group_by_length", "true", "--gradient_checkpointing", "false",
        "--torch_dtype", "float32", "--max_length", "2048", "--split_dataset_ratio", "0",
        "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1000",
        "--report_to", "none", "--dataloader_num_workers", "0", "--use_hf", "true",
        "--output_dir", str(out),
    ]  # fmt: skip


def wait_rss(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, float, str]:
    """Run `cmd`; (exit code, peak RSS MB of it and its waited children, its output)."""
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024, log.read_text(errors="replace")


def spawn(name: str, worker: str, mode: str, ctx: dict[str, Any], args: Any) -> dict[str, Any]:
    tmp: Path = ctx["tmp"]
    out = tmp / f"out-{worker}-{mode}-{time.monotonic_ns()}"
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'trainer_image'}",
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    if worker == "ms-swift":
        cmd = swift_command(ctx["swift"], ctx["model"], ctx["swift_data"], out, args.micro)
    else:
        cmd = [sys.executable, __file__, "--worker", worker, "--mode", mode]
        cmd += ["--model", str(ctx["model"]), "--data", str(ctx["data"]), "--out", str(out)]
        cmd += ["--micro", str(args.micro), "--max-tokens", str(args.max_tokens)]
    started = time.perf_counter()
    code, rss, text = wait_rss(cmd, env, tmp / "worker.log")
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{name} failed ({code}):\n{text[-3000:]}")
    if worker == "ms-swift":
        found = re.findall(r"'train_runtime': '?([0-9.]+)", text)
        steps = re.findall(r"'global_step/max_steps': '(\d+)/", text) or ["?"]
        if not found:
            raise SystemExit(f"{name}: no train_runtime in its output:\n{text[-3000:]}")
        result: dict[str, Any] = {"seconds": float(found[-1]), "steps": steps[-1]}
        result.update(real_tokens=None, padding_fraction=None)
    else:
        result = json.loads(text.strip().splitlines()[-1])
    result.update(peak_rss_mb=rss, wall_seconds=wall)
    print(f"  {name}: {result['seconds']:.1f} s training, {wall:.0f} s wall", flush=True)
    return result


CONTESTANTS = [
    ("padded (Trainer, pad to longest)", "trainer-padded", "none"),
    ("Trainer + group_by_length", "trainer-grouped", "none"),
    ("ms-swift (group_by_length, fp32)", "ms-swift", "none"),
    ("kubetune seed CLI (defaults)", "kubetune", "seed"),
    ("kubetune packing", "kubetune", "packing"),
    ("kubetune length-grouped", "kubetune", "length-grouped"),
    ("kubetune none", "kubetune", "none"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", choices=["qwen3", "small"], default="small")
    p.add_argument("--rows", type=int, default=None, help="default: 2000 small, 400 qwen3")
    p.add_argument("--micro", type=int, default=8)
    p.add_argument(
        "--max-tokens", type=int, default=2048, help="token budget of a packed micro-batch"
    )
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds; medians are shown")
    p.add_argument("--no-swift", action="store_true", help="leave ms-swift out")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated contestant workers/modes to run, e.g. seed,packing",
    )
    p.add_argument(
        "--worker",
        choices=["trainer-padded", "trainer-grouped", "kubetune"],
        help=argparse.SUPPRESS,
    )
    p.add_argument("--mode", default="packing", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    rows = args.rows or (2000 if args.vocab == "small" else 400)
    sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer_image")]
    from kubetune_trainer.tiny_model import build_tiny_model

    contestants = [c for c in CONTESTANTS if not (args.no_swift and c[1] == "ms-swift")]
    if args.only:
        keep = set(args.only.split(","))
        contestants = [
            c for c in contestants if keep & {c[1], c[2]} or c[1].startswith("trainer-padded")
        ]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ctx: dict[str, Any] = {
            "tmp": tmp,
            "model": build_tiny_model(tmp / "model", vocab=args.vocab, size="tiny"),
        }
        ctx["data"] = tmp / "train.jsonl"
        make_dataset(ctx["data"], rows, seed=0)
        if any(c[1] == "ms-swift" for c in contestants):
            ctx["swift"] = ensure_swift()
            ctx["swift_data"] = swift_dataset(ctx["data"], tmp / "swift.jsonl")
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in contestants}
        for round_ in range(args.repeats):  # A B C .. A B C: load hits every contestant alike
            print(f"round {round_ + 1} of {args.repeats}", flush=True)
            for name, worker, mode in list(contestants):
                try:
                    runs[name].append(spawn(name, worker, mode, ctx, args))
                except SystemExit as err:  # report the others; say why this one is missing
                    print(f"  {name}: left out: {err}", flush=True)
                    contestants.remove((name, worker, mode))
                    runs.pop(name, None)
    report(runs, args, rows)


def _median(runs: list[dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def report(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace, rows: int) -> None:
    med = {
        name: {
            k: _median(rs, k) for k in ("seconds", "real_tokens", "padding_fraction", "peak_rss_mb")
        }
        for name, rs in runs.items()
    }
    if not med:
        print("no contestant finished")
        return
    padded = med.get(CONTESTANTS[0][0]) or next(iter(med.values()))
    grouped = med.get(CONTESTANTS[1][0])
    swift = med.get(CONTESTANTS[2][0])
    trainer_tokens = (grouped or padded)["real_tokens"]
    for m in med.values():  # ms-swift trains the same rows: the Trainer's real tokens
        if m["real_tokens"] is None:
            m["real_tokens"] = trainer_tokens
        m["tok_s"] = (m["real_tokens"] or 0) / m["seconds"]
    print(
        f"\nvocab={args.vocab} rows={rows} micro={args.micro} repeats={args.repeats} (CPU, LoRA r={LORA_RANK}; "
        "medians of interleaved rounds)"
    )
    head = f"{'contestant':<36}{'train s':>9}{'real tok/s':>12}{'vs padded':>10}"
    head += f"{'vs Trainer+glen':>16}{'vs ms-swift (s)':>16}{'padding':>9}{'peak RSS MB':>12}"
    print(head)
    for name, m in med.items():
        vs_g = f"{m['tok_s'] / grouped['tok_s']:.2f}x" if grouped else "-"
        vs_s = f"{swift['seconds'] / m['seconds']:.2f}x" if swift else "-"
        pad = "-" if m["padding_fraction"] is None else f"{m['padding_fraction']:.1%}"
        print(
            f"{name:<36}{m['seconds']:>9.1f}{m['tok_s']:>12.0f}"
            f"{m['tok_s'] / max(padded['tok_s'], 1e-9):>9.2f}x"
            f"{vs_g:>16}{vs_s:>16}{pad:>9}{m['peak_rss_mb']:>12.0f}"
        )
    for name, rs in runs.items():
        resolved = rs[0].get("resolved")
        if resolved:
            print(f"{name}: resolved {resolved}")
        print(f"{name}: training seconds per round {[round(r['seconds'], 1) for r in rs]}")


if __name__ == "__main__":
    main()
