"""Names, labels and annotations of a FineTuneJob's children: pure and deterministic.

Every child name is derived from the FineTuneJob name (and the attempt or trial number), so
building the same FineTuneJob twice, or after an operator restart, names the same objects. Names
that would exceed a Kubernetes limit are shortened with a hash suffix, still deterministically.
Also the few names both kinds' pods share: the GPU resource, the trainer container, the PVC mount
root. The API's own names (group, kinds, label keys) come from `kubetune_api.names`, re-exported
here for the operator. Imported by the builders (`finetune.build`, `serving.builders`), `owner`, `kube`,
`finetune.observe` (which maps children back to their owner) and `serving.names`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from kubetune_api.names import (
    ANNOTATION_FTJ,
    ANNOTATION_HASH,
    ANNOTATION_PARAMS,
    API_VERSION,
    GROUP,
    LABEL_ATTEMPT,
    LABEL_FTJ,
    LABEL_TRIAL,
)
from kubetune_api.names import FINETUNEJOB_KIND as KIND
from kubetune_api.names import FINETUNEJOB_PLURAL as PLURAL

FIELD_MANAGER = "kubetune-operator"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"

GPU_RESOURCE = "nvidia.com/gpu"
TRAINER_CONTAINER = "trainer"  # the container of a trainer pod (its termination message is read)
PVC_ROOT = "/mnt/pvc"  # every PersistentVolumeClaim is mounted at PVC_ROOT/<claim>, in every pod

JOB_NAME_LIMIT = 52  # pods of an Indexed Job are named <job>-<index>-<5 random>: stay below 63
LABEL_LIMIT = 63


def _bounded(base: str, suffix: str, limit: int) -> str:
    """`base + suffix`, or a shortened base plus an 8-character hash when that is too long."""
    clean = re.sub(r"[^a-z0-9-]", "-", base.lower())
    if len(clean) + len(suffix) <= limit and clean == base:
        return clean + suffix
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    head = clean[: max(1, limit - len(suffix) - 9)].rstrip("-")
    return f"{head}-{digest}{suffix}"


def label_value(name: str) -> str:
    """The value of the `kubetune.io/finetunejob` label (a label value is at most 63 characters)."""
    return _bounded(name, "", LABEL_LIMIT)


def job_name(name: str, attempt: int) -> str:
    """The batch/v1 Job of one attempt: `<name>-a<N>`; also names its ConfigMap."""
    return _bounded(name, f"-a{attempt}", JOB_NAME_LIMIT)


def trial_job_name(name: str, trial: int) -> str:
    """The batch/v1 Job (and ConfigMap) of one search trial: `<name>-t<N>`."""
    return _bounded(name, f"-t{trial}", JOB_NAME_LIMIT)


def config_map_name(name: str, attempt: int) -> str:
    """The ConfigMap holding the resolved trainer config of one attempt."""
    return job_name(name, attempt)


def service_name(name: str) -> str:
    """The headless Service that gives multi-node pods stable DNS names (a DNS-1035 label)."""
    base = _bounded(name, "", JOB_NAME_LIMIT)
    return base if base[0].isalpha() else f"t-{base}"[:JOB_NAME_LIMIT]


def trainer_account_name(name: str) -> str:
    """ServiceAccount, Role and RoleBinding of the trainer pods of one FineTuneJob."""
    return _bounded(name, "-trainer", LABEL_LIMIT)


def labels(
    name: str, component: str, attempt: int | None = None, trial: int | None = None
) -> dict[str, str]:
    """Labels every child carries; `attempt` (or `trial`) only on per-attempt (per-trial) ones."""
    out = {
        LABEL_MANAGED_BY: FIELD_MANAGER,
        LABEL_COMPONENT: component,
        LABEL_FTJ: label_value(name),
    }
    if attempt is not None:
        out[LABEL_ATTEMPT] = str(attempt)
    if trial is not None:
        out[LABEL_TRIAL] = str(trial)
    return out


@dataclass(frozen=True)
class Run:
    """Which Job of a FineTuneJob: attempt N (`<name>-a<N>`) or search trial N (`<name>-t<N>`)."""

    index: int
    trial: bool = False

    def job_name(self, name: str) -> str:
        """The Job's name; its ConfigMap has the same name."""
        return trial_job_name(name, self.index) if self.trial else job_name(name, self.index)

    def labels(self, name: str, component: str) -> dict[str, str]:
        return labels(name, component, **self.label_kwargs())

    def label_kwargs(self) -> dict[str, int]:
        """`attempt=N` or `trial=N`, for `Owner.child_meta`."""
        return {"trial" if self.trial else "attempt": self.index}


__all__ = [
    "ANNOTATION_FTJ",
    "ANNOTATION_HASH",
    "ANNOTATION_PARAMS",
    "API_VERSION",
    "GROUP",
    "KIND",
    "LABEL_ATTEMPT",
    "LABEL_FTJ",
    "LABEL_TRIAL",
    "PLURAL",
]
