"""Helpers of the s3:// training tests: data rows, a trainer config, running `kubetune train`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
WORDS = ["card", "fee", "limit", "bill", "payment", "interest", "travel", "points", "cash"]


def jsonl(n: int, seed: int) -> bytes:
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
        rows.append({"input": f"User: {question} ({i})?\nAssistant:", "target": answer})
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def config(
    model: dict[str, Any], dataset: dict[str, Any], output: dict[str, Any]
) -> dict[str, Any]:
    return {
        "model": model,
        "dataset": dataset,
        "method": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.0},
        "training": {
            "epochs": 1,
            "microBatchSize": 2,
            "gradientAccumulationSteps": 1,
            "learningRate": 5e-3,
            "precision": "fp32",
            "gradientCheckpointing": False,
            "saveEverySteps": 2,
            "checkpointEveryMinutes": 0,
            "seed": 7,
        },
        "output": output,
    }


def train_argv(cfg_path: Path, term: Path) -> list[str]:
    return [
        sys.executable, "-m", "kubetune_cli.main", "train", "--config", str(cfg_path),
        "--device", "cpu", "--no-progress", "--termination-log", str(term),
    ]  # fmt: skip


def child_env(**extra: str) -> dict[str, str]:
    roots = f"{ROOT / 'operator'}:{ROOT / 'trainer_image'}"
    return {**os.environ, "PYTHONPATH": roots, "HF_HUB_OFFLINE": "1", **extra}


def train(
    work: Path, cfg: dict[str, Any], **env: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run `kubetune train` to the end; (the process, its termination line)."""
    work.mkdir(parents=True, exist_ok=True)
    cfg_path, term = work / "config.yaml", work / "termination-log"
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    proc = subprocess.run(
        train_argv(cfg_path, term), cwd=work, env=child_env(**env), capture_output=True,
        text=True, timeout=600, check=False,
    )  # fmt: skip
    line = json.loads(term.read_text(encoding="utf-8")) if term.exists() else {}
    return proc, line
