"""`kubetune tune`: the command line of the hyperparameter search (see `kubetune_trainer.tuning`).

    kubetune tune --config cfg.yaml [--trials N] [--parallel K] [--study-dir DIR] [--device cpu]

Prints one line per finished trial, then the results table (best first) and where the best
config and adapter were written. Exit codes: 0 at least one trial completed, 1 none did,
2 invalid config or search block (one line per problem).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from kubetune_api import ConfigError, load_trainer_config


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Bayesian hyperparameter search (Optuna).")
    p.add_argument("--config", required=True, help="training config with a search block")
    p.add_argument("--trials", type=int, default=None, help="total trials (default: search.trials)")
    p.add_argument(
        "--parallel", type=int, default=None, help="trials at once (default: search.parallelTrials)"
    )
    p.add_argument(
        "--study-dir", type=Path, default=None, help="study folder (default: <output.path>/tune)"
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if any")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "kubetune tune") -> int:
    args = build_parser(prog).parse_args(argv)
    from kubetune_trainer.tuning.study import TuneOptions, results_table, tune

    try:
        for name in ("trials", "parallel"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise ConfigError([f"--{name} must be >= 1, got {value}"])
        cfg = load_trainer_config(args.config)
        result = tune(cfg, TuneOptions(args.trials, args.parallel, args.study_dir, args.device))
    except ConfigError as err:
        for problem in err.problems:
            print(f"error: {problem}")
        return 2
    print(results_table(result.study))
    if result.best is None:
        print("no trial completed")
        return 1
    print(f"best: trial {result.best.number}, eval_loss {result.best.value:.4f}")
    print(f"best config: {result.best_config}")
    if result.best_adapter is not None:
        print(f"best adapter: {result.best_adapter}")
    return 0
