"""Trainer fault scenarios on the tiny random Qwen3 (CPU): kills, preemption, retries that finish.

    PYTHONPATH=operator:trainer_image .venv/bin/python bench/trainer_faults.py [--rows 64] \
        [--epochs 2] [--kills 2] [--seed 0] [--modes none,length-grouped,packing]

Every attempt is the real `kubetune train` (`kubetune_trainer.cli.main`) in its own process,
forked from this one after it imported torch and the trainer once (imports dominate a tiny run),
one thread so runs are bit-for-bit reproducible; LoRA with dropout 0.1, `saveEverySteps` as the
checkpoint interval. Per batching mode:
1. `straight`: an uninterrupted run, the reference adapter;
2. `kills`: the same run SIGKILLed at `--kills` random steps, once more inside a checkpoint
   write (slowed by `KUBETUNE_TEST_CHECKPOINT_DELAY`), and SIGTERMed once (what a pod deletion
   does: exit 6 Preempted after a checkpoint), resumed with the same command each time until it
   finishes. Checked: max |delta| of its adapter against `straight` <= 1e-6, steps redone per
   SIGKILL <= the interval, none after SIGTERM, every example once per epoch;
3. `oom`: an out-of-memory error injected mid-epoch, resumed with the operator's override
   (microBatchSize halved, gradientAccumulationSteps doubled): the same number of steps, every
   example once per epoch, the packing budget per micro-batch halved;
4. `nan`: a NaN loss injected mid-epoch, resumed with the learning rate divided by 3: the same.
Prints one line per scenario and a JSON list of the figures; exits 1 if any check fails.
`tests/integration/trainer/test_trainer_faults.py` runs it smaller.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DELAY_ENV = "KUBETUNE_TEST_CHECKPOINT_DELAY"
MODES = ("none", "length-grouped", "packing")
INTERVAL = 3  # saveEverySteps
SLOW_WRITE_SECONDS = 3.0
TOLERANCE = 1e-6
PACK_BUDGET = 320  # maxTokensPerBatch under packing, at microBatchSize 4


@dataclass
class Attempt:
    """One trainer process: how it ended and what it reported."""

    code: int
    start_step: int
    last_step: int
    signal: str = ""
    termination: dict[str, Any] = field(default_factory=dict)
    micro: int = 0
    accum: int = 0


@dataclass
class Result:
    """The figures of one scenario."""

    mode: str
    scenario: str
    attempts: int
    kills: int
    sigterms: int
    steps: int
    steps_redone: list[int]
    max_abs_delta: float | None
    examples_per_epoch: list[int]
    kept_rows: int
    once_per_epoch: bool
    micro_x_accum: list[int]
    largest_micro_tokens: list[int]
    problems: list[str] = field(default_factory=list)


def rows(n: int, seed: int) -> list[dict[str, str]]:
    """Input/target pairs of varied lengths (so the batching modes really differ)."""
    rng = random.Random(seed)
    words = ["card", "fee", "limit", "bill", "payment", "interest", "travel", "points", "cash"]
    out = []
    for i in range(n):
        question = " ".join(rng.choice(words) for _ in range(rng.randint(3, 18)))
        answer = " ".join(rng.choice(words) for _ in range(rng.randint(2, 30)))
        out.append({"input": f"User: {question} ({i})?\nAssistant:", "target": answer})
    return out


def write_config(
    work: Path, model: Path, data: Path, mode: str, epochs: int, **training: Any
) -> Path:
    cfg = {
        "model": {"name": str(model)},
        "dataset": {"train": {"path": str(data)}},
        "method": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.1},
        "training": {
            "epochs": epochs,
            "microBatchSize": 4,
            "gradientAccumulationSteps": 2,
            "learningRate": 5e-3,
            "precision": "fp32",
            "gradientCheckpointing": False,
            "dynamicBatching": mode,
            "saveEverySteps": INTERVAL,
            "checkpointEveryMinutes": 0,
            "seed": 7,
            **({"maxTokensPerBatch": PACK_BUDGET} if mode == "packing" else {}),
            **training,
        },
        "output": {"path": str(work / "out")},
    }
    path = work / "config.yaml"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def _child(argv: list[str], env: dict[str, str], out_fd: int) -> None:
    """In the forked child: stdout into the pipe, the run's environment, the real CLI."""
    os.dup2(out_fd, 1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.environ.pop(DELAY_ENV, None)
    os.environ.update(env)
    code = 1
    try:
        from kubetune_trainer.cli import main

        code = main(argv)
    finally:
        sys.stdout.flush()
        os._exit(code)


def attempt(
    config: Path,
    run_id: str,
    *,
    kill_at: int | None = None,
    sig: signal.Signals = signal.SIGKILL,
    in_write: bool = False,
    fault: str | None = None,
) -> Attempt:
    """Run the trainer once in a forked child (this process imported torch and the trainer
    once; the child is the process that trains, as a container's would be); send `sig` after
    step `kill_at`, or inside the next checkpoint write when `in_write`."""
    term = config.parent / "termination-log"
    term.unlink(missing_ok=True)
    argv = ["--config", str(config), "--device", "cpu", "--no-progress"]
    argv += ["--termination-log", str(term), *(["--inject-fault", fault] if fault else [])]
    env = {"KUBETUNE_RUN_ID": run_id, **({DELAY_ENV: str(SLOW_WRITE_SECONDS)} if in_write else {})}
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(argv, env, write_fd)
    os.close(write_fd)
    seen = Attempt(code=0, start_step=0, last_step=0)
    sent = False
    with os.fdopen(read_fd, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            event = _event(line)
            kind = event.get("event")
            if kind == "start":
                seen.start_step = seen.last_step = int(event["start_step"])
                seen.micro = event["micro_batch_size"]
                seen.accum = event["gradient_accumulation_steps"]
            elif kind == "step":
                seen.last_step = int(event["step"])
            due = kill_at is not None and not sent and seen.last_step >= kill_at
            if due and (not in_write or kind == "checkpoint_writing"):
                os.kill(pid, sig)
                sent, seen.signal = True, sig.name
    seen.code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if term.exists() and term.read_text().strip():
        seen.termination = json.loads(term.read_text())
    return seen


def _event(line: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def adapter_delta(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa = load_file(str(a / "adapter_model.safetensors"))
    wb = load_file(str(b / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def summary_of(work: Path) -> dict[str, Any]:
    return json.loads((work / "out" / "summary.json").read_text(encoding="utf-8"))


def _result(
    mode: str, scenario: str, work: Path, attempts: list[Attempt], straight: Path | None
) -> Result:
    summary = summary_of(work)
    redone = [prev.last_step - nxt.start_step for prev, nxt in itertools.pairwise(attempts)]
    return Result(
        mode=mode,
        scenario=scenario,
        attempts=len(attempts),
        kills=sum(a.signal == "SIGKILL" for a in attempts),
        sigterms=sum(a.signal == "SIGTERM" for a in attempts),
        steps=summary["steps"],
        steps_redone=redone,
        max_abs_delta=adapter_delta(work / "out" / "adapter", straight) if straight else None,
        examples_per_epoch=summary["examples_per_epoch"],
        kept_rows=summary["data"]["train"]["kept"],
        once_per_epoch=all(summary["every_example_once_per_epoch"]),
        micro_x_accum=[a.micro * a.accum for a in attempts],
        largest_micro_tokens=[summary["largest_micro_batch_tokens"]],
    )


def run_mode(
    mode: str, base: Path, model: Path, data: Path, *, epochs: int, kills: int, seed: int
) -> list[Result]:
    """The four scenarios of one batching mode."""
    rng = random.Random(f"{seed}:{mode}")
    results: list[Result] = []
    work = base / mode / "straight"
    work.mkdir(parents=True)
    cfg = write_config(work, model, data, mode, epochs)
    first = attempt(cfg, f"{mode}-straight")
    straight = summary_of(work)
    total = straight["steps"]
    results.append(_result(mode, "straight", work, [first], None))
    reference = work / "out" / "adapter"

    work = base / mode / "kills"
    work.mkdir(parents=True)
    cfg = write_config(work, model, data, mode, epochs)
    run_id = f"{mode}-kills"
    chain: list[Attempt] = []
    at = 0
    for k in sorted(rng.sample(range(1, total - 2), kills)):
        chain.append(attempt(cfg, run_id, kill_at=max(k, at + 1)))
        at = chain[-1].last_step
    chain.append(attempt(cfg, run_id, kill_at=at + 1, in_write=True))  # inside a write
    at = chain[-1].last_step
    chain.append(attempt(cfg, run_id, kill_at=min(at + 2, total - 1), sig=signal.SIGTERM))
    chain.append(attempt(cfg, run_id))
    res = _result(mode, "kills", work, chain, reference)
    res.problems += _check_kills(chain, res)
    results.append(res)

    for scenario, change in (("oom", _oom), ("nan", _nan)):
        work = base / mode / scenario
        work.mkdir(parents=True)
        cfg = write_config(work, model, data, mode, epochs)
        at_step = total // 2 + 1
        failed = attempt(cfg, f"{mode}-{scenario}", fault=f"{scenario}:{at_step}")
        cfg = write_config(work, model, data, mode, epochs, **change())
        done = attempt(cfg, f"{mode}-{scenario}")
        res = _result(mode, scenario, work, [failed, done], None)
        res.problems += _check_retry(scenario, failed, done, res, straight)
        results.append(res)
    return results


def _oom() -> dict[str, Any]:
    return {"microBatchSize": 2, "gradientAccumulationSteps": 4}


def _nan() -> dict[str, Any]:
    return {"learningRate": 5e-3 / 3}


def _check_kills(chain: list[Attempt], res: Result) -> list[str]:
    problems = []
    if chain[-1].code != 0:
        problems.append(f"the last attempt exited {chain[-1].code}")
    for a, redone in zip(chain, res.steps_redone, strict=False):
        if a.signal == "SIGKILL" and redone > INTERVAL:
            problems.append(f"{redone} steps redone after a SIGKILL (interval {INTERVAL})")
        if a.signal == "SIGTERM":
            if a.code != 6 or a.termination.get("reason") != "Preempted":
                problems.append(f"SIGTERM: exit {a.code}, {a.termination}")
            if redone != 0:
                problems.append(f"{redone} steps redone after SIGTERM")
    if res.max_abs_delta is None or res.max_abs_delta > TOLERANCE:
        problems.append(f"adapter differs from the uninterrupted run by {res.max_abs_delta}")
    return problems + _check_examples(res)


def _check_retry(
    scenario: str, failed: Attempt, done: Attempt, res: Result, straight: dict[str, Any]
) -> list[str]:
    problems = []
    expect = 4 if scenario == "oom" else 5
    if failed.code != expect or done.code != 0:
        problems.append(f"exit codes {failed.code}, {done.code} (expected {expect}, 0)")
    if res.steps != straight["steps"]:
        problems.append(f"{res.steps} steps, the uninterrupted run {straight['steps']}")
    if len(set(res.micro_x_accum)) != 1:
        problems.append(f"effective batch changed: {res.micro_x_accum}")
    if scenario == "oom" and [failed.micro, done.micro] != [4, 2]:
        problems.append(f"micro-batch {failed.micro} -> {done.micro}, expected 4 -> 2")
    largest = res.largest_micro_tokens[0]
    if scenario == "oom" and res.mode == "packing" and largest > PACK_BUDGET // 2:
        problems.append(f"packed micro-batches of {largest} tokens after the retry (budget 160)")
    return problems + _check_examples(res)


def _check_examples(res: Result) -> list[str]:
    if res.once_per_epoch and all(n == res.kept_rows for n in res.examples_per_epoch):
        return []
    return [f"examples per epoch {res.examples_per_epoch}, {res.kept_rows} rows kept"]


def run(
    base: Path, *, rows_n: int, epochs: int, kills: int, seed: int, modes: list[str]
) -> list[Result]:
    from kubetune_trainer.tiny_model import build_tiny_model

    model = build_tiny_model(base / "model", vocab="small", size="tiny")
    data = base / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(rows_n, seed)), encoding="utf-8")
    results = []
    for mode in modes:
        for res in run_mode(mode, base, model, data, epochs=epochs, kills=kills, seed=seed):
            print(_line(res), flush=True)
            results.append(res)
    return results


def _line(r: Result) -> str:
    delta = "-" if r.max_abs_delta is None else f"{r.max_abs_delta:.1e}"
    verdict = "ok" if not r.problems else "FAIL: " + "; ".join(r.problems)
    return (
        f"{r.mode:15} {r.scenario:8} attempts={r.attempts} kills={r.kills} sigterm={r.sigterms} "
        f"steps={r.steps} redone={r.steps_redone} max|d|={delta} "
        f"examples/epoch={r.examples_per_epoch} (rows {r.kept_rows}) "
        f"micro*accum={r.micro_x_accum} {verdict}"
    )


def _prepare_process() -> None:
    """One thread (before torch starts any), and the trainer imported once for every fork."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    for path in (ROOT / "operator", ROOT / "trainer_image"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    import torch

    torch.set_num_threads(1)
    import kubetune_trainer.cli
    import kubetune_trainer.train  # noqa: F401  (the import the forked attempts share)


def main(argv: list[str] | None = None) -> int:
    _prepare_process()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--kills", type=int, default=2, help="SIGKILLs at random steps per mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--work", default=None, help="folder for the runs (default: a temporary one)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kubetune-faults-") as tmp:
        base = Path(args.work or tmp)
        results = run(
            base,
            rows_n=args.rows,
            epochs=args.epochs,
            kills=args.kills,
            seed=args.seed,
            modes=args.modes.split(","),
        )
    print(json.dumps([asdict(r) for r in results]))
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
