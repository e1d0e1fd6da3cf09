"""`spec.scheduling` of a FineTuneJob: the Kueue queue, the priority class, user labels.

Kubernetes-only (the trainer never reads it). The operator's Job builder (`finetune.build.job`)
turns it into the Job's `kueue.x-k8s.io/queue-name` label (the Job is then created suspended
and Kueue admits it), the pods' `priorityClassName` (Kueue takes the workload's priority from
it), and extra labels and annotations on the Jobs and their pods. Keys the operator and the
Job controller own are refused here, naming the key, so a user label can never hide a child
from the operator or move it to another queue behind the spec's back.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator

import kubetune_api.formats as formats
from kubetune_api.base import ApiModel

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # Kueue's convention, on the Job (or the FineTuneJob)
# Label keys (and prefixes) others own: ours, the Job controller's, and the queue (use queueName).
RESERVED_PREFIXES = ("kubetune.io/", "batch.kubernetes.io/", "app.kubernetes.io/managed-by")
RESERVED_KEYS = frozenset(
    {QUEUE_LABEL, "app.kubernetes.io/component", "job-name", "controller-uid"}
)

QueueName = Annotated[
    str,
    Field(min_length=1, max_length=formats.LABEL_VALUE_MAX, pattern=formats.DNS_SUBDOMAIN),
]
PriorityClassName = Annotated[
    str, Field(min_length=1, max_length=formats.NAME_MAX, pattern=formats.DNS_SUBDOMAIN)
]
LabelValue = Annotated[str, Field(max_length=formats.LABEL_VALUE_MAX, pattern=formats.LABEL_VALUE)]


def check_user_keys(values: dict[str, str] | None, what: str) -> dict[str, str] | None:
    """Valid, not reserved label/annotation keys; the error names the key."""
    for key in values or {}:
        if not re.fullmatch(formats.QUALIFIED_NAME, key) or len(key) > formats.KEY_MAX:
            raise ValueError(f"{what} key {key!r} is not a valid Kubernetes key ([prefix/]name)")
        if key in RESERVED_KEYS or key.startswith(RESERVED_PREFIXES):
            hint = " (set spec.scheduling.queueName instead)" if key == QUEUE_LABEL else ""
            raise ValueError(f"{what} key {key!r} is reserved{hint}")
    return values


class SchedulingSpec(ApiModel):
    """Queueing (Kueue), priority, and labels/annotations for the Jobs and pods."""

    queue_name: QueueName | None = Field(
        default=None,
        description="Kueue LocalQueue in the FineTuneJob's namespace. Set, every Job (trial Jobs "
        "included) is created suspended with the kueue.x-k8s.io/queue-name label and runs only "
        "once Kueue admits it (a multi-node job as one workload: all pods or none). The same "
        "label on the FineTuneJob itself works too; this field wins.",
    )
    priority_class_name: PriorityClassName | None = Field(
        default=None,
        description="PriorityClass of the trainer pods; Kueue takes the workload's priority "
        "from it, so a higher one can preempt lower-priority jobs in the same ClusterQueue.",
    )
    labels: dict[str, LabelValue] | None = Field(
        default=None,
        max_length=formats.MAP_MAX,
        description="Extra labels on the Jobs and their pods (kubetune.io/*, app.kubernetes.io/"
        "managed-by and component, batch.kubernetes.io/* and the queue label are reserved).",
    )
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] | None = Field(
        default=None,
        max_length=formats.MAP_MAX,
        description="Extra annotations on the Jobs and their pods (same reserved keys).",
    )

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, values: dict[str, str] | None) -> dict[str, str] | None:
        return check_user_keys(values, "label")

    @field_validator("annotations")
    @classmethod
    def _annotation_keys(cls, values: dict[str, str] | None) -> dict[str, str] | None:
        return check_user_keys(values, "annotation")
