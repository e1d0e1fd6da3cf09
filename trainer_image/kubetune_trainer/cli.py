"""`kubetune train` and the seed's `swift-finetune`: one code path, exit codes the operator reads.

    kubetune train --config cfg.yaml [--train_path P] [--eval_path P] [--output_dir D]
    swift-finetune --config config.yaml --train_path data/train.jsonl --eval_path data/eval.jsonl --output_dir ./output

Exit codes (see kubetune_api.termination.ExitCode): 0 done, 2 invalid config (one line per
problem), 3 invalid data (file:line: reason), 4 out of memory, 5 NaN/inf loss, 6 preempted
(SIGTERM: a checkpoint was written, resume with the same command), 1 anything else. A failure
also writes a one-line JSON reason to the termination log, success a `Succeeded` line with the
final losses; one process writes it (`failures.writes_termination`: torchrun's RANK 0 for the
outcomes all processes share, else the process that failed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from kubetune_api import ConfigError, load_trainer_config
from kubetune_api.termination import ExitCode
from kubetune_trainer.failures import (
    TrainingFailure,
    is_out_of_memory,
    termination_log_path,
    write_success,
    write_termination,
    writes_termination,
)


def build_parser(prog: str = "kubetune train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Fine-tune a Qwen3 model with PEFT.")
    p.add_argument(
        "--config", required=True, help="YAML: our format, a FineTuneJob manifest, or the seed's"
    )
    p.add_argument(
        "--train_path", "--train-path", dest="train_path", help="training JSONL (overrides config)"
    )
    p.add_argument(
        "--eval_path", "--eval-path", dest="eval_path", help="evaluation JSONL (overrides config)"
    )
    p.add_argument(
        "--output_dir", "--output-dir", dest="output_dir", help="output folder (overrides config)"
    )
    p.add_argument(
        "--resume",
        default="auto",
        help="auto (the output dir's latest checkpoint of this run, if any); never (start a new "
        "run there: its checkpoints are deleted); or a checkpoint path",
    )
    p.add_argument(
        "--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available"
    )
    p.add_argument(
        "--termination-log",
        default=None,
        help="file for the one-line JSON failure reason (default /dev/termination-log if present)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar, JSON lines only")
    p.add_argument("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--inject-fault", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None, prog: str = "kubetune train") -> int:
    args = build_parser(prog).parse_args(argv)
    term = termination_log_path(args.termination_log)
    try:
        cfg = load_trainer_config(
            args.config,
            train_path=args.train_path,
            eval_path=args.eval_path,
            output_dir=args.output_dir,
        )
        summary = _run(cfg, args)
    except ConfigError as err:
        return _fail(term, ExitCode.INVALID_CONFIG, err.problems)
    except TrainingFailure as err:
        return _fail(term, err.code, [str(err)], step=err.step, checkpoint=err.checkpoint)
    except Exception as err:
        from kubetune_trainer.data import DataError
        from kubetune_trainer.storage import StorageError

        if isinstance(err, StorageError):  # one sentence: the URI, what failed, what to check
            return _fail(term, ExitCode.ERROR, [f"object storage: {err}"])

        if isinstance(err, DataError):
            return _fail(term, ExitCode.INVALID_DATA, [str(err)])
        if is_out_of_memory(err):
            return _fail(term, ExitCode.OUT_OF_MEMORY, [str(err).splitlines()[0]])
        _fail(term, ExitCode.ERROR, [f"{type(err).__name__}: {err}"])
        raise
    if writes_termination(ExitCode.SUCCESS, rank=_rank(), told_to_stop=False):
        write_success(term, summary)
    print(
        json.dumps(
            {
                "event": "summary",
                **{k: summary.get(k) for k in ("metrics", "adapter_path", "steps")},
            },
            ensure_ascii=False,
        )
    )
    return 0


def _run(cfg: object, args: argparse.Namespace) -> dict[str, object]:
    from kubetune_trainer.progress import JsonLinesReporter, Reporter, TqdmReporter
    from kubetune_trainer.reporting import extra_reporters
    from kubetune_trainer.train import RunOptions, run

    reporters: list[Reporter] = [JsonLinesReporter()]
    if not args.no_progress and sys.stderr.isatty():
        reporters.append(TqdmReporter())
    reporters.extend(extra_reporters())
    opts = RunOptions(
        resume=args.resume,
        device=args.device,
        reporters=reporters,
        stop_after_steps=args.stop_after_steps,
        inject_fault=args.inject_fault,
    )
    return run(cfg, opts)  # type: ignore[arg-type]


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _fail(term: object, code: ExitCode, lines: list[str], **where: object) -> int:
    from pathlib import Path

    from kubetune_trainer.preemption import STOP

    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    path = term if isinstance(term, Path) else None
    if writes_termination(code, rank=_rank(), told_to_stop=STOP.requested):
        write_termination(path, code, "; ".join(lines), **where)  # type: ignore[arg-type]
    return int(code)


def swift_finetune_main() -> None:
    """The seed article's command, same code as `kubetune train`."""
    sys.exit(main(sys.argv[1:], prog="swift-finetune"))
