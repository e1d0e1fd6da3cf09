"""The retry policy: OOM keeps the effective batch, NaN divides the learning rate by 3, limits hold."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_api.finetune import FineTuneJobSpec, TrainingSpec
from kubetune_operator.finetune.failure import Failure
from kubetune_operator.finetune.retry import apply_overrides, decide_retry
from kubetune_operator.finetune.topology import world_size
from kubetune_operator.finetune.validation import parse_spec


def spec_of(
    training: dict[str, Any], retry: dict[str, Any] | None = None, gpus: int = 1
) -> FineTuneJobSpec:
    return parse_spec(
        {
            "model": {"name": "Qwen/Qwen3-8B"},
            "dataset": {"train": {"pvc": {"claimName": "data", "path": "t.jsonl"}}},
            "training": training,
            "resources": {"gpusPerNode": gpus},
            "output": {"pvc": {"claimName": "out"}},
            "retry": retry or {},
        }
    )


def effective_batch(spec: FineTuneJobSpec, overrides: dict[str, str]) -> int:
    t = apply_overrides(spec.training, overrides)
    return (
        t.resolved_micro_batch(world_size(spec)) * t.gradient_accumulation_steps * world_size(spec)
    )


@pytest.mark.parametrize("reason", ["OutOfMemory", "OOMKilled"])
def test_oom_halves_micro_batch_and_keeps_the_effective_batch(reason: str) -> None:
    spec = spec_of({"microBatchSize": 8, "gradientAccumulationSteps": 2})
    decision = decide_retry(spec, Failure(reason), {}, failed_attempts=1)
    assert decision.retry
    assert decision.overrides == {"microBatchSize": "4", "gradientAccumulationSteps": "4"}
    assert effective_batch(spec, decision.overrides) == effective_batch(spec, {}) == 16
    again = decide_retry(spec, Failure(reason), decision.overrides, failed_attempts=2)
    assert again.overrides == {"microBatchSize": "2", "gradientAccumulationSteps": "8"}
    assert "microBatchSize 4 -> 2" in again.note


def test_oom_with_a_derived_micro_batch_uses_batch_size_and_gpus() -> None:
    spec = spec_of({"batchSize": 32, "gradientAccumulationSteps": 2}, gpus=4)  # micro = 4
    decision = decide_retry(spec, Failure("OutOfMemory"), {}, failed_attempts=1)
    assert decision.overrides == {"microBatchSize": "2", "gradientAccumulationSteps": "4"}
    assert effective_batch(spec, decision.overrides) == 32


def test_odd_micro_batch_shrinks_to_a_divisor() -> None:
    spec = spec_of({"microBatchSize": 6})
    decision = decide_retry(spec, Failure("OutOfMemory"), {}, failed_attempts=1)
    assert decision.overrides == {"microBatchSize": "3", "gradientAccumulationSteps": "2"}
    spec = spec_of({"microBatchSize": 3})
    decision = decide_retry(spec, Failure("OutOfMemory"), {}, failed_attempts=1)
    assert decision.overrides == {"microBatchSize": "1", "gradientAccumulationSteps": "3"}


def test_oom_at_micro_batch_one_gives_up() -> None:
    spec = spec_of({"microBatchSize": 1})
    decision = decide_retry(spec, Failure("OutOfMemory"), {}, failed_attempts=1)
    assert not decision.retry and "microBatchSize 1" in decision.note


def test_nan_divides_the_learning_rate_by_three_and_says_where_it_resumes() -> None:
    spec = spec_of({"learningRate": 3e-4})
    failure = Failure("NaNLoss", checkpoint="/mnt/pvc/out/x/checkpoints/step-000040")
    decision = decide_retry(spec, failure, {}, failed_attempts=1)
    assert decision.overrides == {"learningRate": "0.0001"}
    assert apply_overrides(spec.training, decision.overrides).learning_rate == pytest.approx(1e-4)
    assert "step-000040" in decision.note and "0.0003 -> 0.0001" in decision.note


def test_nan_never_goes_below_the_floor_and_stops_there() -> None:
    spec = spec_of({"learningRate": 2e-6})
    first = decide_retry(spec, Failure("NaNLoss"), {}, failed_attempts=1)
    assert first.retry and first.overrides == {"learningRate": "1e-06"}
    second = decide_retry(spec, Failure("NaNLoss"), first.overrides, failed_attempts=2)
    assert not second.retry and "1e-06 floor" in second.note


def test_changes_accumulate_across_kinds() -> None:
    spec = spec_of({"microBatchSize": 4, "learningRate": 1.5e-4})
    after_oom = decide_retry(spec, Failure("OutOfMemory"), {}, 1).overrides
    after_nan = decide_retry(spec, Failure("NaNLoss"), after_oom, 2).overrides
    assert after_nan == {
        "microBatchSize": "2",
        "gradientAccumulationSteps": "2",
        "learningRate": "5e-05",
    }


@pytest.mark.parametrize("reason", ["InvalidConfig", "InvalidData"])
def test_config_and_data_errors_are_not_retried(reason: str) -> None:
    decision = decide_retry(spec_of({}), Failure(reason), {}, failed_attempts=1)
    assert not decision.retry


def test_other_failures_retry_unchanged_until_max_retries() -> None:
    spec = spec_of({}, retry={"maxRetries": 2})
    assert decide_retry(spec, Failure("Error"), {"learningRate": "0.1"}, 1).overrides == {
        "learningRate": "0.1"
    }
    assert decide_retry(spec, Failure("Error"), {}, 2).retry
    assert not decide_retry(spec, Failure("Error"), {}, 3).retry


def test_disabled_remedies_retry_unchanged() -> None:
    spec = spec_of({"microBatchSize": 4}, retry={"onOutOfMemory": False, "onNaN": False})
    assert decide_retry(spec, Failure("OutOfMemory"), {}, 1).overrides == {}
    assert decide_retry(spec, Failure("NaNLoss"), {}, 1).overrides == {}


def test_overrides_are_only_what_a_resumed_run_may_change() -> None:
    with pytest.raises(ValueError, match="not a retry override: epochs"):
        apply_overrides(TrainingSpec(), {"epochs": "2"})
