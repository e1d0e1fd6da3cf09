"""FineTuneJob status: written by the operator (phase, conditions, attempts) and the trainer
(progress, metrics) through the status subresource; read by `kubectl get` printer columns.

The schema is explicit (no preserve-unknown-fields), so a typo in a status patch is an error
instead of a silently missing column.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kubetune_api.base import ApiModel

Phase = Literal["Pending", "Running", "Retrying", "Succeeded", "Failed", "Suspended"]


class Condition(ApiModel):
    """A Kubernetes-style condition (type, status, reason, message, lastTransitionTime)."""

    type: str = Field(description="Condition type, e.g. Ready, Scheduled, Failed.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str | None = Field(
        default=None, description="CamelCase reason, e.g. Unschedulable, OOMKilled, NaNLoss."
    )
    message: str | None = Field(default=None, description="Human-readable details.")
    last_transition_time: str | None = Field(
        default=None, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="Spec generation this condition is about."
    )


class Progress(ApiModel):
    """Training progress, written by the trainer's status reporter."""

    step: int = Field(default=0, description="Optimizer steps done.")
    total_steps: int = Field(default=0, description="Optimizer steps planned.")
    epoch: float = Field(default=0.0, description="Epochs done (fractional).")
    percent: float = Field(default=0.0, description="step / totalSteps x 100.")
    eta_seconds: float | None = Field(default=None, description="Estimated seconds left.")


class TaskMetrics(ApiModel):
    """Eval metrics of one task of a multi-task mixture (spec.dataset.mixture[].task)."""

    eval_loss: float | None = Field(default=None, description="Loss on this task's eval rows.")
    accuracy: float | None = Field(
        default=None, description="Target-token accuracy on this task's eval rows."
    )


class Metrics(ApiModel):
    """Latest training metrics, written by the trainer's status reporter."""

    train_loss: float | None = Field(default=None, description="Loss of the latest logged step.")
    eval_loss: float | None = Field(
        default=None, description="Loss on the eval set at the latest evaluation."
    )
    tokens_per_second: float | None = Field(
        default=None, description="Real (non-pad) tokens per second, all processes."
    )
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    tasks: dict[str, TaskMetrics] | None = Field(
        default=None,
        max_length=64,
        description="Per task of a multi-task mixture: eval loss and accuracy at the latest evaluation.",
    )


class Attempt(ApiModel):
    """One try of the training Job, and why the next one differs."""

    index: int = Field(description="0 for the first attempt.")
    job_name: str = Field(description="The batch/v1 Job of this attempt.")
    start_time: str | None = Field(default=None, description="When the attempt's Job was created.")
    completion_time: str | None = Field(default=None, description="When the attempt ended.")
    result: str | None = Field(
        default=None, description="Succeeded, or the failure reason (OutOfMemory, NaNLoss, ...)."
    )
    message: str | None = Field(
        default=None, description="Failure message from the trainer's termination log."
    )
    changes: dict[str, str] | None = Field(
        default=None,
        description="Config changed for this attempt (field -> new value), e.g. microBatchSize.",
    )
    reason: str | None = Field(
        default=None,
        description="Why this attempt was started and what changed, e.g. "
        "'OutOfMemory on attempt 0: microBatchSize 4 -> 2, gradientAccumulationSteps 1 -> 2'.",
    )


class Trial(ApiModel):
    """One trial of a hyperparameter search (spec.search): its values and how it ended."""

    index: int = Field(description="0 for the first trial.")
    job_name: str = Field(description="The batch/v1 Job that trains this trial.")
    params: dict[str, str] = Field(
        description="The searched values, e.g. {learningRate: '0.0003', rank: '16'}."
    )
    result: str | None = Field(
        default=None,
        description="Unset while it runs; Succeeded, or the failure reason (OutOfMemory, ...).",
    )
    eval_loss: float | None = Field(default=None, description="Final eval loss (Succeeded only).")
    message: str | None = Field(default=None, description="Failure message, if it failed.")
    start_time: str | None = Field(default=None, description="When its Job was created.")
    completion_time: str | None = Field(default=None, description="When it ended.")


class OutputStatus(ApiModel):
    """Where the results are."""

    adapter_path: str | None = Field(
        default=None,
        description="The trained adapter (PEFT format): pvc://claim/path, or the s3:// URI the "
        "trainer uploaded it to (set only once its upload and manifest are complete).",
    )
    adapter_bytes: int | None = Field(default=None, description="Size of the adapter's files.")
    adapter_sha256: str | None = Field(
        default=None,
        description="Content hash of the adapter: sha256 over 'name size sha256' of each file.",
    )
    checkpoint_step: int | None = Field(default=None, description="Step of the latest checkpoint.")


class FineTuneJobStatus(ApiModel):
    """Observed state of a FineTuneJob."""

    phase: Phase | None = Field(
        default=None, description="Pending, Running, Retrying, Succeeded, Failed or Suspended."
    )
    conditions: list[Condition] | None = Field(
        default=None, max_length=32, description="Latest observations."
    )
    progress: Progress | None = Field(default=None, description="Training progress.")
    metrics: Metrics | None = Field(default=None, description="Latest training metrics.")
    attempts: list[Attempt] | None = Field(
        default=None, max_length=64, description="Every attempt, oldest first."
    )
    output: OutputStatus | None = Field(default=None, description="Where the results are.")
    trials: list[Trial] | None = Field(
        default=None, max_length=1000, description="Search trials (spec.search), oldest first."
    )
    best_trial: int | None = Field(
        default=None, description="Index of the trial with the lowest eval loss so far."
    )
    start_time: str | None = Field(default=None, description="When the first attempt started.")
    completion_time: str | None = Field(
        default=None, description="When the job succeeded or failed."
    )
    observed_generation: int | None = Field(
        default=None, description="The spec generation last reconciled."
    )
    message: str | None = Field(default=None, description="One-line summary of the current state.")
