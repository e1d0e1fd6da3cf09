"""One trial of `kubetune tune`: a real training run that reports eval loss to Optuna.

`PruningReporter` plugs into the training loop's reporters: after each intermediate evaluation
it reports the eval loss to the trial, at the quarter of training it falls in (1..4, so trials
of different lengths compare at the same progress), and raises `optuna.TrialPruned` when the
pruner says so; the exception leaves `train.run` like any other and ends the run. `run_trial`
turns a run into an outcome (complete with its final eval loss, pruned, or failed with a
reason). `python -m kubetune_trainer.tuning.trials` runs one trial in a process of its own, for
`--parallel`: the parent has already sampled the trial's values, so the child only reports.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna

from kubetune_api import TrainerConfig
from kubetune_api.search.sampler import build_pruner
from kubetune_api.trainer_config import parse_trainer_config
from kubetune_trainer.progress import Reporter

BUCKETS = 4
RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"


class PruningReporter(Reporter):
    """Reports intermediate eval loss to an Optuna trial; raises TrialPruned when told to."""

    def __init__(self, trial: optuna.Trial, *, prune: bool) -> None:
        self.trial = trial
        self.prune = prune
        self.total = 0
        self.reported: set[int] = set()

    def on_start(self, total_steps: int, info: dict[str, Any]) -> None:
        self.total = max(total_steps, 1)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        loss = metrics.get("eval_loss")
        if loss is None or step >= self.total:  # the final evaluation is the trial's value
            return
        bucket = math.ceil(BUCKETS * step / self.total)
        if bucket in self.reported:
            return
        self.reported.add(bucket)
        self.trial.report(loss, bucket)
        if self.prune and self.trial.should_prune():
            raise optuna.TrialPruned(
                f"eval loss {loss:.4f} at step {step} of {self.total} is worse than the median"
            )


@dataclass
class TrialOutcome:
    """How a trial ended, for `study.tell` and the results table."""

    state: str  # complete | pruned | fail
    value: float | None = None
    reason: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)


def run_trial(
    trial: optuna.Trial, cfg: TrainerConfig, *, device: str | None, prune: bool
) -> TrialOutcome:
    """Train `cfg` (one trial's config) and return how it ended; never raises for a bad trial."""
    from kubetune_trainer.train import RunOptions, run

    started = time.perf_counter()
    reporter = PruningReporter(trial, prune=prune)
    try:
        summary = run(cfg, RunOptions(resume="never", device=device, reporters=[reporter]))
    except optuna.TrialPruned as err:
        return TrialOutcome("pruned", reason=str(err), attrs=_elapsed(started))
    except Exception as err:  # a failed trial is a result, not the end of the search
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return TrialOutcome("fail", reason=reason, attrs=_elapsed(started))
    metrics = summary.get("metrics", {})
    attrs = {
        **_elapsed(started),
        "steps": summary.get("steps"),
        "accuracy": metrics.get("accuracy"),
        "train_loss": metrics.get("train_loss"),
        "adapter_path": summary.get("adapter_path"),
    }
    if "eval_loss" not in metrics or not math.isfinite(metrics["eval_loss"]):
        return TrialOutcome("fail", reason="no finite eval_loss in the summary", attrs=attrs)
    return TrialOutcome("complete", float(metrics["eval_loss"]), attrs=attrs)


def _elapsed(started: float) -> dict[str, Any]:
    return {"seconds": round(time.perf_counter() - started, 2)}


def write_outcome(path: Path, outcome: TrialOutcome) -> None:
    path.write_text(json.dumps(asdict(outcome)), encoding="utf-8")


def read_outcome(path: Path) -> TrialOutcome:
    return TrialOutcome(**json.loads(path.read_text(encoding="utf-8")))


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Run one already-sampled trial in this process; write its outcome to result.json."""
    p = argparse.ArgumentParser(prog="python -m kubetune_trainer.tuning.trials")
    p.add_argument("--storage", required=True)
    p.add_argument("--study-name", required=True)
    p.add_argument("--trial-id", type=int, required=True)
    p.add_argument("--trial-dir", type=Path, required=True)
    p.add_argument("--pruning", choices=["median", "none"], default="median")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=args.study_name, storage=args.storage, pruner=build_pruner(args.pruning)
    )
    trial = optuna.trial.Trial(study, args.trial_id)
    raw = json.loads((args.trial_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    outcome = run_trial(
        trial, parse_trainer_config(raw), device=args.device, prune=args.pruning == "median"
    )
    write_outcome(args.trial_dir / RESULT_FILE, outcome)
    return 0


if __name__ == "__main__":
    raise SystemExit(worker_main())
