"""`kubetune estimate`: predict peak GPU memory of a training config before any weights load.

    kubetune estimate --config cfg.yaml --gpu-memory 80GiB [--gpus N] [--seq-len L]

Prints a breakdown and exits 0 when the total fits the GPU, 1 when it does not (2: bad config).
This module is the CLI only: it reads the config, finds the model's shape (`config.json` in a
local model directory, else the built-in table of Qwen3 dense configs for hub ids) and prints.
The arithmetic is `kubetune_api.memory` (torch-free; its docstring has the formula), which the
operator's pre-flight calls too. `kubetune_cli` dispatches `kubetune estimate` here.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from kubetune_api import ConfigError, TrainerConfig, load_trainer_config
from kubetune_api.memory import (
    GIB,
    MemoryEstimate,
    ModelShape,
    estimate_memory,
    known_shape,
    parse_size,
)


def model_shape(name_or_path: str) -> ModelShape:
    """The shape of a local model directory (its config.json) or of a known Qwen3 hub id."""
    config = Path(name_or_path) / "config.json"
    if config.is_file():
        return ModelShape.from_config(json.loads(config.read_text(encoding="utf-8")))
    return known_shape(name_or_path)


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="training config (any form kubetune reads)")
    p.add_argument("--gpu-memory", required=True, help="memory of one GPU, e.g. 80GiB or 24GB")
    p.add_argument("--gpus", type=int, default=1, help="GPUs training together (default 1)")
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="tokens per sequence (default: dataset.maxInputTokens + maxTargetTokens)",
    )
    p.add_argument("--model", default=None, help="model directory or hub id (default: model.name)")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "kubetune estimate") -> int:
    """Print the breakdown; exit 0 if it fits, 1 if not, 2 for a bad config or model."""
    args = build_parser(prog).parse_args(argv)
    try:
        gpu = parse_size(args.gpu_memory)
        if args.gpus < 1:
            raise ValueError(f"--gpus must be >= 1, got {args.gpus}")
        cfg = load_trainer_config(args.config)
        shape = model_shape(args.model or cfg.model.name)
        est = estimate_memory(
            cfg, shape, world_size=args.gpus, seq_len=args.seq_len, memory_limit=gpu
        )
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}")
        return 2
    except ValueError as err:
        print(f"error: {err}")
        return 2
    _print_report(cfg, shape, est, gpu)
    return 0 if est.fits(gpu) else 1


def _auto(value: object, resolved: str) -> str:
    """`auto -> on` for a value the trainer resolves at start, the value itself otherwise."""
    if value == "auto":
        return f"auto -> {resolved}"
    return {True: "on", False: "off"}.get(value, str(value))  # type: ignore[call-overload]


def _print_report(cfg: TrainerConfig, shape: ModelShape, est: MemoryEstimate, gpu: int) -> None:
    t = cfg.training
    print(
        f"model: {shape.total_params / 1e9:.2f}B parameters ({shape.num_layers} layers, hidden "
        f"{shape.hidden_size}, vocab {shape.vocab_size}); method {cfg.method.type} "
        f"(trains {est.trainable_params:,}); precision {_auto(t.precision, 'bf16/fp16')}; "
        f"{est.tokens_per_micro_batch} tokens per micro-batch; checkpointing "
        f"{_auto(t.gradient_checkpointing, 'on' if est.checkpointing else 'off')}; "
        f"ZeRO-{t.zero_stage} on {est.world_size} GPU(s)"
    )
    print(est.table(gpu))
    for note in est.notes:
        print(f"note: {note}")
    verdict = "fits" if est.fits(gpu) else "does NOT fit"
    print(f"{verdict}: {est.total_bytes / GIB:.2f} GiB needed, {gpu / GIB:.2f} GiB per GPU")
