"""Resume rules on a real run: a re-created job never inherits an adapter, a changed config is
refused naming the field, deterministic data failures are InvalidData with file:line, SIGTERM
under torchrun (two processes, gloo) stops every rank after the same step with exit 6."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer.cli import main as train_main
from kubetune_trainer.identity import RUN_ID_ENV

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


def _rows(n: int) -> list[dict[str, str]]:
    return [
        {
            "input": f"User: question {i} about fees?\nAssistant:",
            "target": "It is free. " * (1 + i % 3),
        }
        for i in range(n)
    ]


def _config(model: Path, tmp: Path, rows: list[dict[str, str]], **training: Any) -> Path:
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    raw = {
        "model": {"name": str(model)},
        "dataset": {"train": {"path": str(data)}},
        "method": {"type": "lora", "rank": 4, "dropout": 0.1},
        "training": {
            "epochs": 1,
            "microBatchSize": 4,
            "learningRate": 5e-3,
            "precision": "fp32",
            "gradientCheckpointing": False,
            "dynamicBatching": "none",
            **training,
        },
        "output": {"path": str(tmp / "out")},
    }
    path = tmp / "cfg.yaml"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def _train(cfg: Path, term: Path) -> int:
    return train_main(["--config", str(cfg), "--device", "cpu", "--termination-log", str(term)])


def test_recreated_job_and_changed_config_are_refused(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(RUN_ID_ENV, "uid-first")
    cfg, term = _config(tiny_model_dir, tmp_path, _rows(12)), tmp_path / "term"
    assert _train(cfg, term) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["examples_per_epoch"] == [12] and summary["every_example_once_per_epoch"] == [
        True
    ]
    assert (out / "checkpoints" / f"step-{summary['steps']:06d}").is_dir()  # the final checkpoint
    adapter = (out / "adapter" / "adapter_model.safetensors").read_bytes()

    monkeypatch.setenv(RUN_ID_ENV, "uid-second")  # deleted and re-created under the same name
    assert _train(cfg, term) == 2
    assert "belongs to run uid-first, not to this run uid-second" in capsys.readouterr().err
    assert json.loads(term.read_text())["reason"] == "InvalidConfig"
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == adapter

    monkeypatch.setenv(RUN_ID_ENV, "uid-first")
    changed = _config(tiny_model_dir, tmp_path, _rows(12), epochs=2)
    assert _train(changed, term) == 2
    assert "training.epochs is 1 there, 2 now" in capsys.readouterr().err
    retried = _config(tiny_model_dir, tmp_path, _rows(12), learningRate=5e-3 / 3)
    assert _train(retried, term) == 0  # a retry field: the finished run resumes at its end


def test_overlong_example_under_packing_is_invalid_data_with_file_line(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [*_rows(6), {"input": "long " * 200, "target": "x"}]
    cfg = _config(tiny_model_dir, tmp_path, rows, dynamicBatching="packing", maxTokensPerBatch=64)
    term = tmp_path / "term"
    assert _train(cfg, term) == 3
    assert "train.jsonl:7:" in capsys.readouterr().err
    assert json.loads(term.read_text())["reason"] == "InvalidData"


def test_sigterm_under_torchrun_stops_every_rank_after_the_same_step(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = _config(tiny_model_dir, tmp_path, _rows(64), epochs=3, microBatchSize=2)
    term = tmp_path / "term"
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'trainer_image'}",
        "OMP_NUM_THREADS": "1",
        RUN_ID_ENV: "uid-torchrun",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "kubetune_cli.main", "train", "--config", str(cfg), "--device", "cpu"]
    cmd += ["--no-progress", "--termination-log", str(term)]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith('{"event": "step"') and json.loads(line)["step"] >= 2:
            proc.send_signal(signal.SIGTERM)  # what the kubelet does to the container's PID 1
            break
    proc.stdout.read()
    proc.wait(timeout=300)
    reason = json.loads(term.read_text())
    assert reason["reason"] == "Preempted" and reason["exitCode"] == 6, reason
    state = json.loads((Path(reason["checkpoint"]) / "state.json").read_text())
    assert state["global_step"] == reason["step"] >= 2
    assert (Path(reason["checkpoint"]) / "rng-rank1.pt").exists()  # both ranks saved it
