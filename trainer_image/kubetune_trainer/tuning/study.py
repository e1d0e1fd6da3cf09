"""The study of `kubetune tune`: create or resume it, run the remaining trials, report the best.

The study lives in SQLite under the study folder (`study.db`), so rerunning the same command
continues it: trials already finished (complete, pruned or failed) count towards `--trials`,
and trials left running by an interrupted run are marked failed. The study remembers a hash of
what it searches (model, data, method, training, search space, seed); another config in the
same folder is refused rather than mixed in.

Trials run one at a time in this process, or with `parallel > 1` each in a process of its own
(`tuning.trials`), up to `parallel` at once. Processes rather than Optuna's threads: the
Python side of a training step (data, the loop, peft's wrappers) holds the GIL, so threads
would mostly take turns, and every thread would start its own full set of torch intra-op
threads; a child process gets `cpu_count / parallel` threads, a GPU of its own when several
are visible (CUDA_VISIBLE_DEVICES), and a crash or out-of-memory in one trial ends only that
trial. The values are sampled here (TPE, seeded; constant liar while trials run concurrently),
so children only train and report. Folder layout: `study.db`, `trials/trial-NNNN/` (config,
adapter, summary.json), `best_config.yaml`, `best_adapter/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from kubetune_api import TrainerConfig
from kubetune_api.extras import SearchSpec
from kubetune_api.search import space as sp
from kubetune_api.search.sampler import build_pruner, build_sampler
from kubetune_trainer.tuning.trials import (
    CONFIG_FILE,
    RESULT_FILE,
    TrialOutcome,
    read_outcome,
    run_trial,
)

STUDY_NAME = "kubetune"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}


@dataclass
class TuneOptions:
    """How to run the search; None falls back to the config's search block."""

    trials: int | None = None
    parallel: int | None = None
    study_dir: Path | None = None
    device: str | None = None
    pruner: BasePruner | None = None  # tests: replaces the config's pruning (in-process only)


@dataclass
class TuneResult:
    """The study after this run, and where the best trial's config and adapter were written."""

    study: optuna.Study
    ran: int
    best: FrozenTrial | None
    best_config: Path | None
    best_adapter: Path | None


def study_key(cfg: TrainerConfig) -> str:
    """A hash of what the search depends on (not trial counts, parallelism or output)."""
    raw = cfg.to_wire()
    search = dict(raw.pop("search", {}))
    search.pop("trials", None)
    search.pop("parallelTrials", None)
    raw.pop("output", None)
    blob = json.dumps({"config": raw, "search": search}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def open_study(
    cfg: TrainerConfig, search: SearchSpec, study_dir: Path, pruner: BasePruner, trials: int
) -> optuna.Study:
    """Create the study, or load it and check it belongs to this config."""
    from kubetune_api import ConfigError

    study_dir.mkdir(parents=True, exist_ok=True)
    sampler = build_sampler(search.seed, trials)
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage_url(study_dir),
        sampler=sampler,
        pruner=pruner,
        direction="minimize",
        load_if_exists=True,
    )
    key = study.user_attrs.get("config_key")
    if key is None:
        study.set_user_attr("config_key", study_key(cfg))
    elif key != study_key(cfg):
        raise ConfigError(
            [
                f"--study-dir {study_dir}: holds a study of another config or search space; "
                "use a new folder"
            ]
        )
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)
    return study


def storage_url(study_dir: Path) -> str:
    return f"sqlite:///{study_dir.resolve() / 'study.db'}"


def tune(cfg: TrainerConfig, opts: TuneOptions) -> TuneResult:
    """Run the trials still missing from the study; write the best config and adapter."""
    search = sp.check_search(cfg)
    trials = opts.trials or search.trials
    parallel = opts.parallel or search.parallel_trials
    study_dir = opts.study_dir or Path(cfg.output.path or "output") / "tune"
    pruner = opts.pruner or build_pruner(search.pruning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(cfg, search, study_dir, pruner, trials)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    remaining = max(0, trials - done)
    if done:
        print(f"resuming study in {study_dir}: {done} trial(s) done, {remaining} to run")
    runner = _Runner(cfg, search, study, study_dir, opts.device, parallel)
    runner.run(remaining)
    best = _best(study)
    paths = write_best(study, cfg, study_dir) if best else (None, None)
    return TuneResult(study, remaining, best, *paths)


def _best(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min(complete, key=lambda t: float(t.value or 0.0)) if complete else None


class _Runner:
    """Asks the study for trials, runs them (here or in child processes), tells the results."""

    def __init__(
        self,
        cfg: TrainerConfig,
        search: SearchSpec,
        study: optuna.Study,
        study_dir: Path,
        device: str | None,
        parallel: int,
    ) -> None:
        self.cfg, self.search, self.study = cfg, search, study
        self.study_dir, self.device, self.parallel = study_dir, device, parallel
        self.dists = sp.distributions(search.space)
        self.lock = threading.Lock()
        self.slots: queue.Queue[int] = queue.Queue()
        for slot in range(parallel):
            self.slots.put(slot)

    def run(self, count: int) -> None:
        if self.parallel == 1:
            for _ in range(count):
                self.one()
            return
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            for future in [pool.submit(self.one) for _ in range(count)]:
                future.result()

    def one(self) -> None:
        with self.lock:
            trial = self.study.ask(self.dists)
        trial_dir = self.study_dir / "trials" / f"trial-{trial.number:04d}"
        params = dict(trial.params)
        cfg = sp.trial_config(self.cfg, params, trial_dir, sp.default_eval_every(self.cfg, params))
        prune = self.search.pruning == "median"
        if self.parallel == 1:
            outcome = run_trial(trial, cfg, device=self.device, prune=prune)
        else:
            outcome = self.in_child(trial, cfg, trial_dir)
        with self.lock:
            self.tell(trial, outcome)

    def in_child(self, trial: optuna.Trial, cfg: TrainerConfig, trial_dir: Path) -> TrialOutcome:
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_wire()), encoding="utf-8")
        slot = self.slots.get()
        try:
            proc = subprocess.run(
                self.child_command(trial, trial_dir),
                env=self.child_env(slot),
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            self.slots.put(slot)
        result = trial_dir / RESULT_FILE
        if result.is_file():
            return read_outcome(result)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return TrialOutcome("fail", reason=f"trial process exited {proc.returncode}: {tail[0]}")

    def child_command(self, trial: optuna.Trial, trial_dir: Path) -> list[str]:
        command = [sys.executable, "-m", "kubetune_trainer.tuning.trials"]
        command += ["--storage", storage_url(self.study_dir), "--study-name", STUDY_NAME]
        command += ["--trial-id", str(trial._trial_id), "--trial-dir", str(trial_dir)]
        command += ["--pruning", self.search.pruning]
        return command + (["--device", self.device] if self.device else [])

    def child_env(self, slot: int) -> dict[str, str]:
        env = dict(os.environ)
        roots = {str(Path(m.__file__).resolve().parents[1]) for m in _packages()}
        env["PYTHONPATH"] = os.pathsep.join([*sorted(roots), env.get("PYTHONPATH", "")])
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.parallel))
        gpus = _visible_gpus()
        if gpus and self.device != "cpu":
            env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        return env

    def tell(self, trial: optuna.Trial, outcome: TrialOutcome) -> None:
        for key, value in {**outcome.attrs, "reason": outcome.reason}.items():
            trial.set_user_attr(key, value)
        state = STATES[outcome.state]
        if state == TrialState.COMPLETE:
            self.study.tell(trial, outcome.value)
        else:
            self.study.tell(trial, state=state)
        value = f"eval_loss {outcome.value:.4f}" if outcome.value is not None else outcome.reason
        print(f"trial {trial.number}: {outcome.state}: {value} {_short(trial.params)}", flush=True)


def _packages() -> list[Any]:
    import kubetune_api
    import kubetune_trainer

    return [kubetune_api, kubetune_trainer]


def _visible_gpus() -> list[str]:
    """GPU ids a child may be pinned to: CUDA_VISIBLE_DEVICES, else what torch sees (if >1)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [str(i) for i in range(count)] if count > 1 else []


def _short(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def results_table(study: optuna.Study) -> str:
    """trial, state, eval loss, seconds and every searched value, best first."""
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params}, key=list(sp.PARAMS).index)
    header = ["trial", "state", "eval_loss", "seconds", *names]
    order = sorted(trials, key=lambda t: (t.value is None, t.value or 0.0, t.number))
    rows = [
        [
            str(t.number),
            t.state.name.lower(),
            "-" if t.value is None else f"{t.value:.4f}",
            _fmt(t.user_attrs.get("seconds", "-")),
            *(_fmt(t.params.get(n, "-")) for n in names),
        ]
        for t in order
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    )


def write_best(
    study: optuna.Study, cfg: TrainerConfig, study_dir: Path
) -> tuple[Path, Path | None]:
    """best_config.yaml (the user's config with the best values) and best_adapter/."""
    best = _best(study)
    assert best is not None
    config_path = study_dir / "best_config.yaml"
    header = (
        f"# kubetune tune: best of {len(study.trials)} trials in {study_dir} "
        f"(trial {best.number}, eval_loss {best.value:.4f})\n"
    )
    body = yaml.safe_dump(
        sp.with_params(cfg, dict(best.params)).to_wire(), sort_keys=False, allow_unicode=True
    )
    config_path.write_text(header + body, encoding="utf-8")
    adapter = best.user_attrs.get("adapter_path")
    if not adapter or not Path(adapter).is_dir():
        return config_path, None
    target = study_dir / "best_adapter"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(adapter, target)
    summary = Path(adapter).parent / "summary.json"
    if summary.is_file():  # lets `kubetune export` see how the adapter was trained
        shutil.copy2(summary, target / "summary.json")
    return config_path, target
