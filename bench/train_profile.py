"""Profile optimizer steps of Kubetune's training loop on a tiny random Qwen3 (CPU).

    .venv/bin/python bench/train_profile.py [--vocab small|qwen3] [--precision auto] \
        [--checkpointing auto|true|false] [--mode length-grouped] [--steps 8]

Builds the loop the way `kubetune_trainer.train.fit` does (same config path as the seed CLI:
only the given keys are set, everything else is the schema's default), runs two warm-up steps,
then times `--steps` optimizer steps (milliseconds per step) and profiles them with
torch.profiler, printing the top entries by self CPU time. Used to find per-step overhead
(issue 14); the figures are recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer_image"), str(ROOT / "bench")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", choices=["qwen3", "small"], default="small")
    p.add_argument("--precision", default=None, help="default: the schema's")
    p.add_argument("--checkpointing", default=None, help="auto | true | false (default: schema's)")
    p.add_argument("--mode", default="length-grouped")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rows", type=int, default=400)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from kubetune_api.trainer_config import parse_trainer_config
    from kubetune_trainer.distributed import init_runtime
    from kubetune_trainer.prepare import prepare_data
    from kubetune_trainer.tiny_model import build_tiny_model
    from kubetune_trainer.train import Loop, RunOptions, build_model, resolve_defaults
    from train_throughput import make_dataset

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir = build_tiny_model(tmp / "model", vocab=args.vocab, size="tiny")
        data_path = tmp / "train.jsonl"
        make_dataset(data_path, args.rows, seed=0)
        training: dict[str, object] = {"microBatchSize": 8, "dynamicBatching": args.mode}
        if args.precision:
            training["precision"] = args.precision
        if args.checkpointing:
            ck = args.checkpointing
            training["gradientCheckpointing"] = ck if ck == "auto" else ck == "true"
        raw = {
            "model": {"name": str(model_dir)},
            "dataset": {"train": {"path": str(data_path)}, "dedupe": False},
            "method": {"type": "lora", "rank": 16},
            "training": training,
            "output": {"path": str(tmp / "out")},
        }
        rt = init_runtime("cpu")
        cfg, resolved = resolve_defaults(parse_trainer_config(raw), rt)
        print(f"resolved: {resolved}")
        data = prepare_data(cfg)
        model, _ = build_model(cfg, rt)
        loop = Loop(cfg, RunOptions(device="cpu", resume="never"), rt, data, model)
        steps = loop.epoch_steps(0)

        def one(k: int) -> None:
            loop.step(model, loop.order.step_batches(steps[k]))
            loop.optimizer_step(model)

        one(0)
        one(1)
        started = time.perf_counter()
        for k in range(2, 2 + args.steps):
            one(k)
        ms = (time.perf_counter() - started) * 1000 / args.steps
        print(
            f"{ms:.1f} ms per optimizer step (mean of {args.steps}, threads {torch.get_num_threads()})"
        )
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for k in range(2 + args.steps, 2 + 2 * args.steps):
                one(k)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
