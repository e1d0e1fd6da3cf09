"""The search space: Optuna distributions, and configs with a trial's values.

`distributions` turns `search.space` (SearchSpec in kubetune_api.extras) into Optuna
distributions, named after the fields they set (`learning_rate` -> training.learningRate,
`rank` -> method.rank, ...). `with_params` applies one trial's values to a config (through
`ApiModel.with_values`); `trial_config` also gives the trial its own output folder;
`check_search` reports, before any trial runs, every value in the space that the config schema
would refuse. Called by `kubetune_trainer.tuning.study` (kubetune tune) and by the operator
(`spec.search`: the trial ConfigMaps and the checks at admission).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from kubetune_api import ConfigError, DataSource, TrainerConfig
from kubetune_api.extras import SEARCH_PARAMS, FloatRange, IntChoices, SearchSpace, SearchSpec
from kubetune_api.trainer_config import data_source_path

PARAMS = SEARCH_PARAMS  # search.space field -> (config section, wire key)
EVALS_PER_TRIAL = 4  # when training.evalEverySteps is unset: evaluate about this often


def searched(space: SearchSpace) -> dict[str, FloatRange | IntChoices]:
    """The fields of the space that are set, in PARAMS order."""
    return {name: r for name in PARAMS if (r := getattr(space, name)) is not None}


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """One Optuna distribution per searched field."""
    out: dict[str, BaseDistribution] = {}
    for name, rng in searched(space).items():
        if isinstance(rng, FloatRange):
            out[name] = FloatDistribution(rng.low, rng.high, log=rng.log)
        else:
            out[name] = CategoricalDistribution(list(dict.fromkeys(rng.choices)))
    return out


def param_values(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's values keyed by the dotted wire path each one sets ("training.learningRate")."""
    return {".".join(PARAMS[name]): value for name, value in params.items()}


def with_params(cfg: TrainerConfig, params: dict[str, Any]) -> TrainerConfig:
    """The config with `params` applied and no search block (validated again)."""
    return cfg.with_values(param_values(params), drop=["search"])


def trial_config(
    cfg: TrainerConfig, params: dict[str, Any], output_dir: Path, eval_every: int
) -> TrainerConfig:
    """What one trial trains: the values, its own output folder, regular evals, no checkpoints."""
    values = {**param_values(params), "output": {"path": str(output_dir)}}
    if cfg.training.eval_every_steps is None:
        values["training.evalEverySteps"] = eval_every
    return cfg.with_values(values, drop=["search", "training.saveEverySteps"])


def check_search(cfg: TrainerConfig) -> SearchSpec:
    """The search block, or a ConfigError listing every problem with it."""
    search = cfg.search
    if search is None:
        raise ConfigError(["search: kubetune tune needs a search block in the config"])
    problems = [] if searched(search.space) else ["search.space: set at least one field"]
    if cfg.dataset.eval is None and not any(m.eval for m in cfg.dataset.mixture or []):
        problems.append("dataset.eval: the search minimises eval loss; set an eval file")
    if search.space.gradient_accumulation_steps and cfg.training.batch_size is not None:
        problems.append(
            "search.space.gradientAccumulationSteps: conflicts with training.batchSize "
            f"({cfg.training.batch_size}); set training.microBatchSize instead"
        )
    for name, rng in searched(search.space).items():
        values = [rng.low, rng.high] if isinstance(rng, FloatRange) else rng.choices
        for value in values:
            problems += _refused(cfg, name, value)
    if problems:
        raise ConfigError(problems)
    return search


def _refused(cfg: TrainerConfig, name: str, value: Any) -> list[str]:
    try:
        with_params(cfg, {name: value})
    except ConfigError as err:
        where = f"search.space.{_camel(name)}"
        return [f"{where}: value {value!r} is refused: {p}" for p in err.problems]
    return []


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def default_eval_every(cfg: TrainerConfig, params: dict[str, Any]) -> int:
    """Optimizer steps between evaluations: about EVALS_PER_TRIAL per trial (from line counts)."""
    rows = sum(_count_rows(p) for p in _train_paths(cfg))
    t = cfg.training
    micro = t.resolved_micro_batch(1)
    accum = int(params.get("gradient_accumulation_steps", t.gradient_accumulation_steps))
    epochs = int(params.get("epochs", t.epochs))
    batches = math.ceil(rows / micro)
    steps = epochs * math.ceil(batches / accum)
    steps = min(steps, t.max_steps) if t.max_steps else steps
    return max(1, steps // EVALS_PER_TRIAL)


def _train_paths(cfg: TrainerConfig) -> list[str]:
    sources: list[DataSource | None] = [m.train for m in cfg.dataset.mixture or []]
    sources = sources or [cfg.dataset.train]
    return [p for s in sources if (p := data_source_path(s)) is not None]


def _count_rows(path: str) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return 0
