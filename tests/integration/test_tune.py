"""`kubetune tune` on the tiny Qwen3 (CPU): finds a better config than the default, resumes,
prunes through the training loop's reporters, runs trials in parallel processes, and refuses
bad search blocks with one line per problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.pruners import ThresholdPruner
from optuna.trial import TrialState

from kubetune_api.trainer_config import parse_trainer_config
from kubetune_trainer.train import RunOptions, run
from kubetune_trainer.tuning.cli import main
from kubetune_trainer.tuning.study import STUDY_NAME, TuneOptions, storage_url, tune

pytestmark = pytest.mark.integration

TRAIN = [
    ("用户：如何申请信用卡？\nAI助手：", "您可通过银行官网、手机APP或线下网点提交申请。"),
    ("User: How do I raise my credit limit?\nAssistant:", "Apply in the app under Card > Limit."),
    ("用户：信用卡丢了怎么办？\nAI助手：", "请立即拨打客服热线挂失，并申请补卡。"),
    ("User: What is the annual fee?\nAssistant:", "No annual fee in the first year."),
    ("用户：账单日是哪天？\nAI助手：", "账单日为每月5日，还款日为每月25日。"),
    ("User: Can I pay in installments?\nAssistant:", "Yes, in 3, 6 or 12 payments."),
]
EVAL = [
    ("用户：怎么申请信用卡？\nAI助手：", "您可通过银行官网或手机APP提交申请。"),
    ("User: How do I raise my limit?\nAssistant:", "Apply in the app under Card > Limit."),
    ("用户：还款日是哪天？\nAI助手：", "还款日为每月25日。"),
]
SPACE = {
    "learningRate": {"low": 1e-4, "high": 5e-2, "log": True},
    "rank": {"choices": [4, 8, 16]},
    "epochs": {"choices": [2, 4]},
    "warmupRatio": {"low": 0.0, "high": 0.2},
}


def write_jsonl(path: Path, pairs: list[tuple[str, str]]) -> str:
    rows = [json.dumps({"input": i, "target": t}, ensure_ascii=False) for i, t in pairs]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


def raw_config(model_dir: Path, tmp: Path, **search: Any) -> dict[str, Any]:
    """The default config (library defaults but for CPU-friendly precision and batching)."""
    raw: dict[str, Any] = {
        "model": {"name": str(model_dir)},
        "dataset": {
            "train": {"path": write_jsonl(tmp / "train.jsonl", TRAIN)},
            "eval": {"path": write_jsonl(tmp / "eval.jsonl", EVAL)},
        },
        "training": {
            "epochs": 2,
            "microBatchSize": 3,
            "precision": "fp32",
            "gradientCheckpointing": False,
        },
        "output": {"path": str(tmp / "default")},
    }
    if search:
        raw["search"] = search
    return raw


def write_config(tmp: Path, raw: dict[str, Any]) -> str:
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return str(path)


def load_study(study_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=storage_url(study_dir))


def test_search_beats_the_default_and_resumes(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = raw_config(tiny_model_dir, tmp_path, space=SPACE, seed=1)
    default = run(parse_trainer_config(raw), RunOptions(device="cpu", resume="never"))
    default_loss = default["metrics"]["eval_loss"]
    config, study_dir = write_config(tmp_path, raw), tmp_path / "study"
    args = ["--config", config, "--study-dir", str(study_dir), "--device", "cpu"]

    assert main([*args, "--trials", "3"]) == 0
    first = {t.number: t.params for t in load_study(study_dir).trials}
    assert len(first) == 3
    capsys.readouterr()
    assert main([*args, "--trials", "8"]) == 0
    out = capsys.readouterr().out
    assert "resuming study" in out and "3 trial(s) done, 5 to run" in out
    study = load_study(study_dir)
    assert [t.number for t in study.trials] == list(range(8))
    assert {n: study.trials[n].params for n in first} == first  # the first three kept as they were
    header = ["trial", "state", "eval_loss", "seconds", "learning_rate", "rank", "epochs"]
    assert [*header, "warmup_ratio"] in [line.split() for line in out.splitlines()]
    best = min(t.value for t in study.trials if t.state == TrialState.COMPLETE and t.value)
    with capsys.disabled():
        print(f"{out}default eval loss {default_loss:.4f}; best of 8 trials {best:.4f}")
    assert best < default_loss
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert all(t.intermediate_values for t in complete)  # the reporter fed the pruner

    best_cfg = parse_trainer_config(yaml.safe_load((study_dir / "best_config.yaml").read_text()))
    assert best_cfg.search is None
    assert best_cfg.training.learning_rate == study.best_params["learning_rate"]
    assert (study_dir / "best_adapter" / "adapter_config.json").is_file()
    assert (study_dir / "best_adapter" / "summary.json").is_file()

    assert main([*args, "--trials", "8"]) == 0  # nothing left: reports again, runs nothing
    assert "8 trial(s) done, 0 to run" in capsys.readouterr().out


def test_a_pruned_trial_stops_its_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    raw = raw_config(tiny_model_dir, tmp_path, space={"rank": {"choices": [4, 8]}})
    raw["training"]["evalEverySteps"] = 1
    cfg = parse_trainer_config(raw)
    opts = TuneOptions(
        trials=2, study_dir=tmp_path / "study", device="cpu", pruner=ThresholdPruner(upper=0.0)
    )
    result = tune(cfg, opts)
    assert result.best is None and result.best_config is None
    for trial in result.study.trials:
        assert trial.state == TrialState.PRUNED
        assert list(trial.intermediate_values) == [1]
        assert "worse than the median" in trial.user_attrs["reason"]
        trial_dir = tmp_path / "study" / "trials" / f"trial-{trial.number:04d}"
        assert not (trial_dir / "summary.json").exists()  # the run stopped at its first eval


def test_parallel_trials_run_in_child_processes(tiny_model_dir: Path, tmp_path: Path) -> None:
    raw = raw_config(tiny_model_dir, tmp_path, space={"learningRate": SPACE["learningRate"]})
    study_dir = tmp_path / "study"
    args = ["--config", write_config(tmp_path, raw), "--study-dir", str(study_dir)]
    assert main([*args, "--trials", "2", "--parallel", "2", "--device", "cpu"]) == 0
    study = load_study(study_dir)
    assert len(study.trials) == 2
    assert all(t.state == TrialState.COMPLETE for t in study.trials), [
        t.user_attrs.get("reason") for t in study.trials
    ]
    assert len({t.params["learning_rate"] for t in study.trials}) == 2
    for trial in study.trials:
        assert (study_dir / "trials" / f"trial-{trial.number:04d}" / "result.json").is_file()


def test_bad_search_blocks_are_refused(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = raw_config(tiny_model_dir, tmp_path)
    assert main(["--config", write_config(tmp_path, raw)]) == 2
    assert "search: kubetune tune needs a search block" in capsys.readouterr().out
    raw = raw_config(tiny_model_dir, tmp_path, space={"dropout": {"low": 0.0, "high": 1.5}})
    del raw["dataset"]["eval"]
    raw["training"]["batchSize"] = 6
    raw["search"]["space"]["gradientAccumulationSteps"] = {"choices": [1, 4]}
    assert main(["--config", write_config(tmp_path, raw)]) == 2
    out = capsys.readouterr().out
    assert "dataset.eval: the search minimises eval loss" in out
    assert "search.space.gradientAccumulationSteps: conflicts with training.batchSize (6)" in out
    assert "search.space.dropout: value 1.5 is refused" in out
    assert "search.space.gradientAccumulationSteps: value 4 is refused" in out
