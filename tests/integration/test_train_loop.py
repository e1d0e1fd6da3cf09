"""The training loop's promises, each on the tiny Qwen3 on the CPU.

- gradient accumulation normalises by target tokens: 8 x 1 and 1 x 8 give the same gradient;
- a run stopped after N steps and resumed ends with the same loss as an uninterrupted run;
- failures become exit codes and a JSON termination reason (config, data, NaN);
- the seed's `swift-finetune` command trains the seed's example line with a seed-format config;
- ZeRO-2 (FSDP2, gloo) with two processes matches one process accumulating the same batches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune_api.trainer_config import parse_trainer_config
from kubetune_trainer.cli import main as train_main
from kubetune_trainer.distributed import init_runtime
from kubetune_trainer.train import Loop, RunOptions, build_model, fit, prepare_data

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SEED_LINE = {
    "input": "用户：如何申请信用卡？\nAI助手：",
    "target": "您可通过银行官网、手机APP或线下网点提交申请，需准备身份证、收入证明等材料。",
}


def rows(n: int) -> list[dict[str, str]]:
    out = [SEED_LINE]
    for i in range(1, n):
        out.append(
            {
                "input": f"User: question number {i} about card fees?\nAssistant:",
                "target": " ".join(["The fee is waived"] * (1 + i % 4)) + f" for case {i}.",
            }
        )
    return out


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8"
    )
    return path


def config(model_dir: Path, tmp: Path, **training: Any) -> dict[str, Any]:
    data = write_jsonl(tmp / "train.jsonl", rows(16))
    return {
        "model": {"name": str(model_dir)},
        "dataset": {"train": {"path": str(data)}},
        "method": {"type": "lora", "rank": 4, "dropout": 0.0},
        "training": {
            "epochs": 2,
            "microBatchSize": 4,
            "learningRate": 5e-3,
            "precision": "fp32",
            "gradientCheckpointing": False,
            "dynamicBatching": "none",
            **training,
        },
        "output": {"path": str(tmp / "out")},
    }


def test_accumulation_matches_one_big_micro_batch(tiny_model_dir: Path, tmp_path: Path) -> None:
    grads = []
    for micro, accum in ((8, 1), (1, 8)):
        cfg = parse_trainer_config(
            config(tiny_model_dir, tmp_path, microBatchSize=micro, gradientAccumulationSteps=accum)
        )
        rt = init_runtime("cpu")
        torch.manual_seed(0)
        model, _ = build_model(cfg, rt)
        loop = Loop(cfg, RunOptions(device="cpu"), rt, prepare_data(cfg), model)
        batches = loop.epoch_batches(0)
        first_eight = [i for b in batches for i in b][:8]
        micro_batches = [loop.micro_batch(batches, s) for s in range(accum)]
        assert sorted(i for s in range(accum) for i in batches[s]) == sorted(first_eight)
        loss = loop.step(model, micro_batches)
        grads.append(
            (loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        )
    (loss_a, grad_a), (loss_b, grad_b) = grads
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for name, g in grad_a.items():
        assert torch.allclose(g, grad_b[name], atol=1e-6, rtol=1e-4), name


def test_resume_gives_the_same_final_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    straight.mkdir()
    _, full = fit(
        parse_trainer_config(config(tiny_model_dir, straight, saveEverySteps=100)),
        RunOptions(device="cpu"),
    )
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    cfg = parse_trainer_config(config(tiny_model_dir, resumed, saveEverySteps=100))
    _, partial = fit(cfg, RunOptions(device="cpu", stop_after_steps=3))
    assert partial["stopped_at_step"] == 3
    assert (resumed / "out" / "checkpoints" / "step-000003" / "state.json").exists()
    _, final = fit(cfg, RunOptions(device="cpu"))  # resume="auto" finds step-000003
    assert final["steps"] == full["steps"]
    assert final["metrics"]["train_loss"] == pytest.approx(full["metrics"]["train_loss"], abs=1e-6)


def _cli(args: list[str]) -> int:
    return train_main(args)


def test_invalid_config_exits_2_with_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model_name: m\npeft_method: lora\nlora_rank: 0\nlearning_rate: -1\nepochs: 0\n")
    term = tmp_path / "term"
    assert (
        _cli(["--config", str(cfg), "--train_path", "x.jsonl", "--termination-log", str(term)]) == 2
    )
    err = capsys.readouterr().err
    assert "method.rank" in err and "training.learningRate" in err and "training.epochs" in err
    assert json.loads(term.read_text())["reason"] == "InvalidConfig"


def test_rank_larger_than_hidden_is_caught_before_training(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = config(tiny_model_dir, tmp_path)
    raw["method"]["rank"] = 1000
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(raw))
    assert _cli(["--config", str(path), "--termination-log", str(tmp_path / "t")]) == 2
    assert "1000" in capsys.readouterr().err


def test_bad_jsonl_line_exits_3_with_line_number(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = config(tiny_model_dir, tmp_path)
    data = Path(raw["dataset"]["train"]["path"])
    data.write_text(data.read_text() + '{"input": "x", "target": 5}\n', encoding="utf-8")
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(raw))
    term = tmp_path / "term"
    assert _cli(["--config", str(path), "--termination-log", str(term)]) == 3
    assert "train.jsonl:17" in capsys.readouterr().err
    assert json.loads(term.read_text())["reason"] == "InvalidData"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    raw = config(tiny_model_dir, tmp_path, saveEverySteps=2)
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(raw))
    term = tmp_path / "term"
    code = _cli(["--config", str(path), "--termination-log", str(term), "--inject-fault", "nan:5"])
    assert code == 5
    reason = json.loads(term.read_text())
    assert reason["reason"] == "NaNLoss" and reason["step"] == 5
    assert reason["checkpoint"].endswith("step-000004")


def test_swift_finetune_trains_the_seed_example(tiny_model_dir: Path, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [SEED_LINE] * 4 + rows(8)[1:])
    evals = write_jsonl(tmp_path / "eval.jsonl", [SEED_LINE])
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"model_name: {tiny_model_dir}\nframework: ms-swift\npeft_method: lora\nlora_rank: 16\n"
        "batch_size: 4\nlearning_rate: 3e-3\nepochs: 2\ngradient_accumulation_steps: 2\n"
    )
    term = tmp_path / "termination-log"
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'trainer_image'}",
        "KUBETUNE_TERMINATION_LOG": str(term),
    }
    script = Path(sys.executable).parent / "swift-finetune"
    cmd = (
        [str(script)]
        if script.exists()
        else [
            sys.executable,
            "-c",
            "from kubetune_trainer.cli import swift_finetune_main as m; m()",
        ]
    )
    proc = subprocess.run(
        [
            *cmd,
            "--config",
            str(cfg),
            "--train_path",
            str(train),
            "--eval_path",
            str(evals),
            "--output_dir",
            str(tmp_path / "output"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "output" / "summary.json").read_text())
    assert summary["config"]["method"]["rank"] == 16 and summary["micro_batch_size"] == 2
    assert summary["data"]["train"]["kept"] == 8  # 4 copies of the seed line deduplicated to 1
    assert summary["data"]["train"]["duplicates"] == 3
    assert (tmp_path / "output" / "adapter" / "adapter_config.json").exists()
    # The seed CLI's defaults fit the hardware: resolved once, printed, recorded.
    resolved = summary["resolved_defaults"]
    assert resolved["precision"]["value"] == summary["config"]["training"]["precision"]
    assert resolved["gradient_checkpointing"]["value"] is False  # a tiny model fits
    assert summary["config"]["training"]["gradientCheckpointing"] is False
    assert "precision: auto -> " in proc.stderr
    start = json.loads(next(x for x in proc.stdout.splitlines() if '"event": "start"' in x))
    assert start["resolved_defaults"]["gradient_checkpointing"] is False
    steps = [
        json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"event": "step"')
    ]
    assert steps and steps[-1]["loss"] < steps[0]["loss"]
    done = json.loads(term.read_text())  # what the operator reads from a finished pod
    assert done["reason"] == "Succeeded" and done["exitCode"] == 0
    assert done["evalLoss"] == pytest.approx(summary["metrics"]["eval_loss"])
    assert done["step"] == summary["steps"]


def test_zero2_two_processes_match_one_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    """torchrun --nproc_per_node=2 with zeroStage 2 (FSDP2 over gloo) vs. one process with accumulation 2."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'trainer_image'}",
        "OMP_NUM_THREADS": "1",
    }
    results = {}
    for name, world, accum, zero in (("fsdp", 2, 1, 2), ("single", 1, 2, 0)):
        run_dir = tmp_path / name
        run_dir.mkdir()
        raw = config(
            tiny_model_dir,
            run_dir,
            microBatchSize=2,
            gradientAccumulationSteps=accum,
            zeroStage=zero,
            epochs=1,
        )
        path = run_dir / "cfg.yaml"
        path.write_text(json.dumps(raw))
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={world}",
            "-m",
            "kubetune_cli.main",
            "train",
        ]
        proc = subprocess.run(
            [*launcher, "--config", str(path), "--device", "cpu", "--no-progress"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = json.loads((run_dir / "out" / "summary.json").read_text())
    fsdp, single = results["fsdp"], results["single"]
    assert fsdp["world_size"] == 2 and fsdp["steps"] == single["steps"]
    assert fsdp["metrics"]["train_loss"] == pytest.approx(single["metrics"]["train_loss"], rel=1e-4)


def test_resume_takes_the_configs_learning_rate(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The operator's NaN retry halves training.learningRate; a resumed run must use it."""
    raw = config(
        tiny_model_dir, tmp_path, saveEverySteps=100, warmupRatio=0.0, scheduler="constant"
    )
    fit(parse_trainer_config(raw), RunOptions(device="cpu", stop_after_steps=2))
    raw["training"]["learningRate"] = 2.5e-3  # half of 5e-3
    cfg = parse_trainer_config(raw)
    rt = init_runtime("cpu")
    model, _ = build_model(cfg, rt)
    loop = Loop(cfg, RunOptions(device="cpu"), rt, prepare_data(cfg), model)
    loop.resume(model)
    assert loop.state.global_step == 2
    assert [g["lr"] for g in loop.optimizer.param_groups] == [pytest.approx(2.5e-3)]
    loop.scheduler.step()
    assert loop.scheduler.get_last_lr() == [pytest.approx(2.5e-3)]
