"""Which run an output folder belongs to, and which checkpoints may resume it (identity rules)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_api import ConfigError, TrainerConfig
from kubetune_api.trainer_config import parse_trainer_config
from kubetune_trainer.data.steps import Reference
from kubetune_trainer.identity import (
    RUN_FILE,
    RUN_ID_ENV,
    check_resumable,
    claim_output,
    commit_claim,
    config_mismatches,
)

REF = Reference(8, 2, 1, None)


def _cfg(tmp: Path, **training: object) -> TrainerConfig:
    return parse_trainer_config(
        {
            "model": {"name": "m"},
            "dataset": {"train": {"path": "train.jsonl"}},
            "training": {"microBatchSize": 8, "gradientAccumulationSteps": 2, **training},
            "output": {"path": str(tmp)},
        }
    )


def test_a_recreated_finetunejob_never_inherits_the_old_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule 1: the uid of the FineTuneJob (KUBETUNE_RUN_ID) owns the folder."""
    monkeypatch.setenv(RUN_ID_ENV, "uid-old")
    cfg = _cfg(tmp_path)
    commit_claim(tmp_path, claim_output(tmp_path, cfg, REF, resume="auto"), resume="auto")
    (tmp_path / "adapter").mkdir()
    assert claim_output(tmp_path, cfg, REF, resume="auto").run_id == "uid-old"  # next attempt
    monkeypatch.setenv(RUN_ID_ENV, "uid-new")  # deleted and re-created under the same name
    with pytest.raises(ConfigError, match="belongs to run uid-old, not to this run uid-new"):
        claim_output(tmp_path, cfg, REF, resume="auto")


def test_results_without_a_run_record_are_foreign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RUN_ID_ENV, "uid-1")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ConfigError, match=r"a run without run\.json"):
        claim_output(tmp_path, _cfg(tmp_path), REF, resume="auto")


def test_kubetune_train_keeps_the_folders_run_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(RUN_ID_ENV, raising=False)
    cfg = _cfg(tmp_path)
    first = claim_output(tmp_path, cfg, REF, resume="auto")
    commit_claim(tmp_path, first, resume="auto")
    assert claim_output(tmp_path, cfg, REF, resume="auto").run_id == first.run_id
    (tmp_path / "checkpoints" / "step-000002").mkdir(parents=True)
    fresh = claim_output(tmp_path, cfg, REF, resume="never")
    assert fresh.run_id != first.run_id
    commit_claim(tmp_path, fresh, resume="never")
    assert not (tmp_path / "checkpoints").exists()  # rule 3
    assert json.loads((tmp_path / RUN_FILE).read_text())["run_id"] == fresh.run_id


def test_a_retry_keeps_the_runs_step_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUN_ID_ENV, "uid-1")
    commit_claim(
        tmp_path, claim_output(tmp_path, _cfg(tmp_path), REF, resume="auto"), resume="auto"
    )
    retried = _cfg(tmp_path, microBatchSize=4, gradientAccumulationSteps=4)
    again = claim_output(tmp_path, retried, Reference(4, 4, 1, None), resume="auto")
    assert again.plan_reference == REF
    changed = _cfg(tmp_path, epochs=5)
    assert (
        claim_output(tmp_path, changed, Reference(8, 2, 1), resume="auto").reference[
            "micro_batch_size"
        ]
        == 8
    )


def test_only_the_retry_fields_may_change(tmp_path: Path) -> None:
    a = _cfg(tmp_path).to_wire()
    b = _cfg(
        tmp_path / "elsewhere", microBatchSize=4, gradientAccumulationSteps=4, learningRate=1e-5
    )
    assert config_mismatches(a, b.to_wire()) == []
    c = _cfg(tmp_path, epochs=4, dynamicBatching="packing").to_wire()
    assert config_mismatches(a, c) == [
        'training.dynamicBatching is "length-grouped" there, "packing" now',
        "training.epochs is 3 there, 4 now",
    ]


def test_check_resumable_names_every_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RUN_ID_ENV, "uid-1")
    record = claim_output(tmp_path, _cfg(tmp_path, epochs=4), REF, resume="auto")
    saved = {"run_id": "uid-0", "data_hash": "aaaa", "config": _cfg(tmp_path).to_wire()}
    with pytest.raises(ConfigError) as err:
        check_resumable(tmp_path / "ckpt", saved, record, "bbbb")
    text = "\n".join(err.value.problems)
    assert "belongs to run uid-0, this is uid-1" in text
    assert "data hash aaaa there, bbbb now" in text
    assert "training.epochs is 3 there, 4 now" in text
    check_resumable(
        tmp_path / "ckpt",
        {**saved, "config": record.config, "data_hash": "bbbb"},
        record,
        "bbbb",
        check_run=False,
    )  # --resume PATH: another run's, same config
    with pytest.raises(ConfigError, match="records no run"):
        check_resumable(tmp_path / "ckpt", {}, record, "bbbb")
