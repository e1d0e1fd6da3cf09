"""Small trainer parts: learning-rate schedule, termination reasons, JSON progress lines."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from kubetune_api.termination import ExitCode, TerminationReason
from kubetune_trainer.failures import (
    termination_log_path,
    write_success,
    write_termination,
)
from kubetune_trainer.progress import JsonLinesReporter, StepRecord
from kubetune_trainer.schedule import lr_factor, warmup_steps_for


def test_warmup_then_cosine_to_zero() -> None:
    total, warm = 100, warmup_steps_for(100, 0.1)
    assert warm == 10
    assert lr_factor(0, total, warm, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, total, warm, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, total, warm, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, total, warm, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, total, warm, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(55, total, warm, "linear") == pytest.approx(0.5)
    assert lr_factor(99, total, warm, "constant") == 1.0


def test_termination_reason_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    line = write_termination(
        path,
        ExitCode.NAN_LOSS,
        "loss became nan at step 3",
        step=3,
        checkpoint="/out/checkpoints/step-000002",
    )
    assert path.read_text().strip() == line
    parsed = TerminationReason.parse(line)
    assert (
        parsed is not None
        and parsed.reason == "NaNLoss"
        and parsed.exitCode == 5
        and parsed.step == 3
    )
    assert TerminationReason.parse("Error: plain text") is None


def test_success_line_carries_the_final_losses(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    summary = {
        "metrics": {"eval_loss": 1.25, "train_loss": float("nan")},
        "steps": 12,
        "adapter_path": "/out/adapter",
    }
    line = write_success(path, summary)
    data = json.loads(path.read_text())
    assert data == json.loads(line)
    assert data["reason"] == "Succeeded" and data["exitCode"] == 0 and data["step"] == 12
    assert data["evalLoss"] == 1.25 and "trainLoss" not in data  # NaN is not JSON: left out
    parsed = TerminationReason.parse(line)
    assert parsed is not None and parsed.evalLoss == 1.25


def test_termination_message_fits_kubelet_limit() -> None:
    line = TerminationReason("Error", "x" * 10_000, 1).to_json()
    assert len(line.encode()) <= 4096


def test_termination_log_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(tmp_path / "env"))
    assert termination_log_path(str(tmp_path / "flag")) == tmp_path / "flag"
    assert termination_log_path(None) == tmp_path / "env"


def test_json_lines_reporter() -> None:
    out = io.StringIO()
    rep = JsonLinesReporter(out)
    rep.on_step(
        StepRecord(
            step=5,
            total_steps=10,
            epoch=0.5,
            loss=1.25,
            learning_rate=1e-4,
            tokens_per_second=100.0,
            elapsed_seconds=10.0,
        )
    )
    rec = json.loads(out.getvalue())
    assert rec["event"] == "step" and rec["step"] == 5 and rec["loss"] == 1.25 and rec["lr"] == 1e-4
    assert rec["eta_seconds"] == 10.0
