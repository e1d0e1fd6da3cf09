"""The retry policy: how a failed attempt's reason changes the next attempt, or ends the job.

    OutOfMemory / OOMKilled  halve microBatchSize, double gradientAccumulationSteps (the effective
                             batch stays the same); resume from the last checkpoint
    NaNLoss                  divide the learning rate by 3 (never below 1e-6); resume from the
                             last good checkpoint; at the floor already, stop
    InvalidConfig / Data     never retried: the same input fails the same way
    Preempted                a disruption (preemption, eviction, drain, pod deletion), not a
                             failure: resumed unchanged from the checkpoint the trainer wrote on
                             SIGTERM, within `spec.retry.maxPreemptions`, spending no retry
    anything else            retried unchanged
all within `spec.retry.maxRetries` (disruptions aside). Overrides are cumulative and stored as strings in
`status.attempts[].changes`, so the next attempt's config is rebuilt from the status alone.
Pure; called by `attempts`; `apply_overrides` also by `build.config` and `preflight`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubetune_api.finetune import FineTuneJobSpec, TrainingSpec
from kubetune_api.termination import PREEMPTED, REASONS, ExitCode
from kubetune_api.trainer_config import RETRY_FIELDS
from kubetune_operator.finetune.failure import Failure
from kubetune_operator.finetune.topology import world_size

OOM_REASONS = frozenset({REASONS[ExitCode.OUT_OF_MEMORY], "OOMKilled"})  # OOMKilled: the kubelet
NAN_REASONS = frozenset({REASONS[ExitCode.NAN_LOSS]})
FATAL_REASONS = frozenset({REASONS[ExitCode.INVALID_CONFIG], REASONS[ExitCode.INVALID_DATA]})
OVERRIDABLE = frozenset(f.removeprefix("training.") for f in RETRY_FIELDS)
NAN_LR_DIVISOR = 3
MIN_LEARNING_RATE = 1e-6


@dataclass(frozen=True)
class RetryDecision:
    """Retry (with these cumulative overrides) or stop; `note` says what changed and why."""

    retry: bool
    overrides: dict[str, str] = field(default_factory=dict)
    note: str = ""


def apply_overrides(training: TrainingSpec, overrides: dict[str, str]) -> TrainingSpec:
    """The training spec with an attempt's overrides, validated again.

    Overrides are keyed by the spec's wire names (`microBatchSize`), as `status.attempts[]`
    stores them, so they go through `with_values` like a search trial's values do. Only the
    fields the trainer lets a resumed run change (`RETRY_FIELDS`) may be overridden.
    """
    unknown = sorted(set(overrides) - OVERRIDABLE)
    if unknown:
        raise ValueError(f"not a retry override: {', '.join(unknown)}")
    return training.with_values(overrides) if overrides else training


def _smaller_micro(micro: int) -> int | None:
    """The largest proper divisor of `micro` (its half when even); None at 1."""
    return next((d for d in range(micro // 2, 0, -1) if micro % d == 0), None)


def _oom(spec: FineTuneJobSpec, overrides: dict[str, str]) -> RetryDecision:
    training = apply_overrides(spec.training, overrides)
    micro = training.resolved_micro_batch(world_size(spec))
    smaller = _smaller_micro(micro)
    if smaller is None:
        return RetryDecision(
            False, overrides, "out of memory at microBatchSize 1: nothing to halve"
        )
    accum = training.gradient_accumulation_steps * (micro // smaller)
    new = {**overrides, "microBatchSize": str(smaller), "gradientAccumulationSteps": str(accum)}
    note = (
        f"microBatchSize {micro} -> {smaller}, gradientAccumulationSteps "
        f"{training.gradient_accumulation_steps} -> {accum} (same effective batch)"
    )
    return RetryDecision(True, new, note)


def _nan(spec: FineTuneJobSpec, overrides: dict[str, str], failure: Failure) -> RetryDecision:
    lr = apply_overrides(spec.training, overrides).learning_rate
    lower = max(float(f"{lr / NAN_LR_DIVISOR:.3g}"), MIN_LEARNING_RATE)
    if lower >= lr:
        return RetryDecision(
            False,
            overrides,
            f"NaN loss at learningRate {lr:g}, already at the {MIN_LEARNING_RATE:g} floor",
        )
    new = {**overrides, "learningRate": f"{lower:g}"}
    where = f"checkpoint {failure.checkpoint}" if failure.checkpoint else "the start"
    return RetryDecision(True, new, f"learningRate {lr:g} -> {lower:g}, resuming from {where}")


def count_endings(results: list[str | None], this: str) -> tuple[int, int]:
    """(failures, disruptions) among attempt results, counting this attempt's `this` reason;
    Succeeded, Suspended and unfinished attempts count as neither."""
    ended = [r for r in [*results, this] if r not in (None, "Suspended", "Succeeded")]
    disruptions = sum(1 for r in ended if r == PREEMPTED)
    return len(ended) - disruptions, disruptions


def _preempted(spec: FineTuneJobSpec, overrides: dict[str, str], count: int) -> RetryDecision:
    allowed = spec.retry.max_preemptions
    if count > allowed:
        return RetryDecision(False, overrides, f"disruptions exhausted ({allowed} allowed)")
    note = f"disruption {count} of {allowed} allowed, resuming unchanged from the last checkpoint"
    return RetryDecision(True, overrides, note)


def decide_retry(
    spec: FineTuneJobSpec,
    failure: Failure,
    overrides: dict[str, str],
    failed_attempts: int,
    disruptions: int = 0,
) -> RetryDecision:
    """What to do after a failed attempt; `failed_attempts` and `disruptions` count this one
    (`count_endings`): a disruption spends only `disruptions`."""
    if failure.reason == PREEMPTED:
        return _preempted(spec, overrides, disruptions)
    if failure.reason in FATAL_REASONS:
        return RetryDecision(False, overrides, f"{failure.reason} is not retried")
    if failed_attempts > spec.retry.max_retries:
        return RetryDecision(
            False, overrides, f"retries exhausted ({spec.retry.max_retries} allowed)"
        )
    if failure.reason in OOM_REASONS and spec.retry.on_out_of_memory:
        return _oom(spec, overrides)
    if failure.reason in NAN_REASONS and spec.retry.on_na_n:
        return _nan(spec, overrides, failure)
    return RetryDecision(True, overrides, "retrying unchanged from the last checkpoint")
