"""Which run an output folder and its checkpoints belong to, and whether a checkpoint may resume.

A run is one FineTuneJob (its uid, which the operator passes as `KUBETUNE_RUN_ID`) or, for
`kubetune train` without that variable, one output folder (a random id written on the first
start). `<output>/run.json` records the run id, the run's config and its *reference* batch
settings (the first attempt's micro-batch, accumulation, processes and packing budget: the step
plan of `data.steps`, fixed for the whole run). Every checkpoint's `state.json` records the run
id, the config and the data hash as well.

The rules, checked before any training:

1. An output folder belongs to one run. A start whose `KUBETUNE_RUN_ID` differs from the
   folder's `run.json` (or finds checkpoints or an adapter but no `run.json`) is refused with
   InvalidConfig before anything is written: a FineTuneJob deleted and re-created under the
   same name (so the same default output folder) never inherits the old one's adapter.
2. A checkpoint resumes only when its run id, data hash and config equal the current ones, except
   `RETRY_FIELDS` (what the operator's retry policy changes) and `output`; anything else is
   refused with InvalidConfig naming each mismatch. `--resume PATH` skips the run id check (the
   user named the checkpoint), never the config and data checks.
3. `--resume never` starts a new run in the folder: its checkpoints are deleted and `run.json`
   is rewritten, so a later `--resume auto` cannot mix the two runs.

Called by the training loop; knows nothing about models or tensors.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kubetune_api import ConfigError, TrainerConfig
from kubetune_api.trainer_config import RETRY_FIELDS
from kubetune_trainer.checkpoint import CHECKPOINTS, fsync_path, write_durably
from kubetune_trainer.data.steps import Reference

RUN_FILE = "run.json"
RUN_ID_ENV = "KUBETUNE_RUN_ID"
IGNORED_PREFIXES = ("output", "search")  # where the run writes; a search block is not training


@dataclass
class RunRecord:
    """The content of `run.json`."""

    run_id: str
    config: dict[str, Any]
    config_hash: str
    reference: dict[str, Any]

    @property
    def plan_reference(self) -> Reference:
        return Reference(**self.reference)


def read_run_file(output: Path) -> RunRecord | None:
    path = output / RUN_FILE
    if not path.exists():
        return None
    try:
        return RunRecord(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as err:
        raise ConfigError([f"{path}: not a run record ({err}); delete it or the folder"]) from None


def write_run_file(output: Path, record: RunRecord) -> None:
    output.mkdir(parents=True, exist_ok=True)
    tmp = output / f".{RUN_FILE}.tmp"
    write_durably(tmp, json.dumps(asdict(record), indent=2, ensure_ascii=False))
    tmp.replace(output / RUN_FILE)
    fsync_path(output)


def _flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, node


def config_mismatches(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Fields (dotted wire paths) whose values differ, outside RETRY_FIELDS and `output`."""
    old, new = dict(_flatten(before)), dict(_flatten(now))
    out = []
    for key in sorted(old.keys() | new.keys()):
        if key in RETRY_FIELDS or key.split(".")[0] in IGNORED_PREFIXES:
            continue
        if old.get(key) != new.get(key):
            out.append(f"{key} is {_show(old.get(key))} there, {_show(new.get(key))} now")
    return out


def _show(value: Any) -> str:
    return "unset" if value is None else json.dumps(value, ensure_ascii=False)


def _has_results(output: Path) -> bool:
    return (output / CHECKPOINTS).is_dir() or (output / "adapter").is_dir()


def _refuse_foreign(output: Path, record: RunRecord | None, run_id: str) -> None:
    owner = f"run {record.run_id}" if record else "a run without run.json"
    raise ConfigError(
        [
            f"output folder {output} belongs to {owner}, not to this run {run_id} "
            f"({RUN_ID_ENV}): a re-created FineTuneJob never inherits another run's checkpoints "
            "or adapter; delete the folder or point spec.output at a new path"
        ]
    )


def claim_output(
    output: Path, cfg: TrainerConfig, reference: Reference, *, resume: str
) -> RunRecord:
    """Decide which run this is (rules 1 and 3) and return its record; reads only (the loop
    calls `commit_claim` once the resume checks have passed)."""
    env_id = os.environ.get(RUN_ID_ENV) or None
    record = read_run_file(output)
    foreign = (record is None and _has_results(output)) or (record and record.run_id != env_id)
    if resume != "never" and env_id is not None and foreign:
        _refuse_foreign(output, record, env_id)
    fresh = RunRecord(
        env_id or uuid.uuid4().hex, cfg.to_wire(), cfg.config_hash(), asdict(reference)
    )
    if record is None or resume == "never":
        return fresh
    # The same run: its plan stays, unless the config changed beyond the retry fields (then a
    # checkpoint cannot resume, rule 2, and a run without one starts over with a new plan).
    same = not config_mismatches(record.config, fresh.config)
    plan = record.reference if same else fresh.reference
    return RunRecord(record.run_id, fresh.config, fresh.config_hash, plan)


def commit_claim(output: Path, record: RunRecord, *, resume: str) -> None:
    """Write `run.json` (the main process only); `--resume never` deletes old checkpoints."""
    if resume == "never":
        shutil.rmtree(output / CHECKPOINTS, ignore_errors=True)
    write_run_file(output, record)


def check_resumable(
    checkpoint: Path,
    saved: dict[str, Any],
    record: RunRecord,
    data_hash: str,
    *,
    check_run: bool = True,
) -> None:
    """Rule 2: raise ConfigError naming every mismatch between a checkpoint and this run."""
    problems: list[str] = []
    if not saved:
        problems.append("it records no run (written by an older trainer)")
    else:
        if check_run and saved.get("run_id") != record.run_id:
            problems.append(f"it belongs to run {saved.get('run_id')}, this is {record.run_id}")
        if saved.get("data_hash") != data_hash:
            problems.append(
                f"the training data changed: data hash {saved.get('data_hash')} there, "
                f"{data_hash} now"
            )
        problems += config_mismatches(saved.get("config") or {}, record.config)
    if problems:
        allowed = ", ".join(RETRY_FIELDS)
        raise ConfigError(
            [f"checkpoint {checkpoint} cannot resume this run: {p}" for p in problems]
            + [
                f"only {allowed} may change between attempts of a run; use another output "
                "folder, or --resume never to start over"
            ]
        )
