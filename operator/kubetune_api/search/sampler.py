"""The TPE sampler and median pruner of a search, and stateless suggestions from a history.

`build_sampler` is the one place the sampler is configured (`build_pruner` the pruner's): seeded, random for the first
`startup_trials(trials)` trials, then TPE, with constant liar so that trials running at the same
time spread out. `kubetune tune` (`study`) keeps its history in SQLite; the operator keeps it in
the FineTuneJob's `status.trials` instead, so `suggest` rebuilds an in-memory study from that
history and asks it for one more trial. With the same history and index it returns the same
values, so a reconcile that runs twice (an operator restart) plans the same trial.
Imports optuna and the schema only (no torch): the operator calls `suggest`; `kubetune tune`
(`kubetune_trainer.tuning.study` and `.trials`) calls the builders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import optuna
from optuna.pruners import BasePruner, MedianPruner, NopPruner
from optuna.trial import TrialState, create_trial

from kubetune_api.extras import SearchSpec
from kubetune_api.search.space import distributions

HistoryState = Literal["complete", "running", "fail"]
_STATES = {
    "complete": TrialState.COMPLETE,
    "running": TrialState.RUNNING,
    "fail": TrialState.FAIL,
}


def startup_trials(trials: int) -> int:
    """Random trials before TPE takes over: a third of the budget, between 2 and 10."""
    return max(2, min(10, trials // 3))


def build_sampler(seed: int, trials: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup_trials(trials), constant_liar=True
    )


def build_pruner(pruning: str) -> BasePruner:
    """Median pruning after two finished trials, from the first quarter of training on."""
    if pruning == "none":
        return NopPruner()
    return MedianPruner(n_startup_trials=2, n_warmup_steps=0, interval_steps=1)


@dataclass(frozen=True)
class PastTrial:
    """One trial of the history: its values, its state and (complete only) its eval loss."""

    params: dict[str, Any]
    state: HistoryState
    value: float | None = None


def suggest(search: SearchSpec, history: Sequence[PastTrial], index: int) -> dict[str, Any]:
    """The values of trial `index`, given the trials before it (keys: search.space fields)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = distributions(search.space)
    study = optuna.create_study(
        direction="minimize", sampler=build_sampler(search.seed + index, search.trials)
    )
    for past in history:
        study.add_trial(
            create_trial(
                params=past.params,
                distributions=dists,
                value=past.value if past.state == "complete" else None,
                state=_STATES[past.state],
            )
        )
    return dict(study.ask(dists).params)
