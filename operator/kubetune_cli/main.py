"""The `kubetune` command: a thin dispatcher that imports each subcommand only when it runs.

The operator image has no torch and the runtime image has no kopf, so nothing heavy is imported
here. Each subcommand's module owns its own argument parsing.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Sequence

from kubetune_cli.quiet import silence_kernels_hub_warning

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "kubetune_trainer.cli",
        "fine-tune a Qwen3 model with PEFT (LoRA, QLoRA, adapter, prefix)",
    ),
    "tiny-model": (
        "kubetune_trainer.tiny_model",
        "write a random-weight Qwen3 and tokenizer (no hub needed)",
    ),
    "export": (
        "kubetune_trainer.export",
        "merge an adapter into its base model (optionally int8/int4)",
    ),
    "tune": (
        "kubetune_trainer.tuning.cli",
        "Bayesian hyperparameter search (Optuna TPE, median pruning)",
    ),
    "estimate": (
        "kubetune_trainer.estimate",
        "predict peak GPU memory of a config and say if it fits",
    ),
    "serve": ("kubetune_server.cli", "serve a model over an OpenAI-compatible HTTP API"),
    "route": (
        "kubetune_server.router_cli",
        "route requests to a small or large model by complexity",
    ),
    "operator": ("kubetune_operator.cli", "run the Kubernetes operator (kopf)"),
}


def usage() -> str:
    lines = ["usage: kubetune <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines.append("\nRun `kubetune <command> --help` for a command's options.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"kubetune: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    silence_kernels_hub_warning()
    entry = importlib.import_module(SUBCOMMANDS[name][0]).main
    takes_prog = "prog" in inspect.signature(entry).parameters
    result = entry(rest, prog=f"kubetune {name}") if takes_prog else entry(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
