"""The FineTuneJob CRD: printer columns and CEL rules layered on the generated schema.

Collected by `kubetune_api.crd` (make crds); also called by tests that install the CRD.
"""

from __future__ import annotations

from typing import Any

import kubetune_api.formats as formats
from kubetune_api.finetune import FineTuneJobSpec
from kubetune_api.status import FineTuneJobStatus
from kubetune_api.storage import URI_MESSAGE, URI_RULE
from kubetune_api.structural import build_crd

COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Phase",
        "type": "string",
        "jsonPath": ".status.phase",
        "description": "Lifecycle phase.",
    },
    {
        "name": "Progress",
        "type": "string",
        "jsonPath": ".status.progress.percent",
        "description": "Percent of training steps done.",
    },
    {
        "name": "Loss",
        "type": "number",
        "jsonPath": ".status.metrics.trainLoss",
        "description": "Latest training loss.",
    },
    {
        "name": "Eval-Loss",
        "type": "number",
        "jsonPath": ".status.metrics.evalLoss",
        "description": "Latest eval loss.",
    },
    {
        "name": "ETA",
        "type": "string",
        "jsonPath": ".status.progress.etaSeconds",
        "description": "Seconds left.",
    },
    {
        "name": "Queued",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Queued")].reason',
        "description": "Kueue: why the Job waits (its Workload's reason), or Admitted.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Queue", "type": "string", "jsonPath": ".spec.scheduling.queueName", "priority": 1},
    {"name": "Method", "type": "string", "jsonPath": ".spec.method.type", "priority": 1},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name", "priority": 1},
    {"name": "GPUs", "type": "integer", "jsonPath": ".spec.resources.gpusPerNode", "priority": 1},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step", "priority": 1},
    {
        "name": "Attempts",
        "type": "integer",
        "jsonPath": ".status.attempts[-1:].index",
        "priority": 1,
    },
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
]

ONE_SOURCE = {
    "rule": "[has(self.path), has(self.pvc), has(self.configMap), has(self.uri)].filter(x, x).size() == 1",
    "message": "set exactly one of path, pvc, configMap, uri",
}
IMMUTABLE = "is immutable: create a new FineTuneJob to change it"


def _immutable(field: str) -> dict[str, Any]:
    return {"rule": "self == oldSelf", "message": f"spec.{field} {IMMUTABLE}"}


SOURCES = ["model.source", "dataset.train", "dataset.eval"]
SOURCES += ["dataset.mixture.[].train", "dataset.mixture.[].eval"]
PVC_PATHS = [f"{s}.pvc.path" for s in SOURCES] + ["output.pvc.path"]
NO_PARENT = "'..' is refused: a path inside a volume must stay inside it"
QUALIFIED = "keys must be Kubernetes names ([prefix/]name, e.g. nvidia.com/gpu.product)"
TOLERATION = [
    {"rule": "self.operator != 'Exists' || !has(self.value) || self.value == ''",
     "message": "value must be empty when operator is Exists"},
    {"rule": "has(self.key) || self.operator == 'Exists'",
     "message": "operator must be Exists when key is empty"},
    {"rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
     "message": "tolerationSeconds needs effect NoExecute"},
]  # fmt: skip
FORMATS: dict[str, list[dict[str, Any]]] = {
    **{path: [formats.cel_no_parent(NO_PARENT)] for path in PVC_PATHS},
    **{f"{s}.uri": [{"rule": URI_RULE, "message": URI_MESSAGE}] for s in [*SOURCES, "output"]},
    "resources.nodeSelector": [formats.cel_keys(formats.QUALIFIED_NAME, QUALIFIED)],
    "resources.resources.requests": [formats.cel_keys(formats.QUALIFIED_NAME, QUALIFIED)],
    "resources.resources.limits": [formats.cel_keys(formats.QUALIFIED_NAME, QUALIFIED)],
    "resources.tolerations.[]": TOLERATION,
}


RULES: dict[str, list[dict[str, Any]]] = {
    "": [  # spec itself: a job cannot turn into a search (or back) half way
        {
            "rule": "has(self.search) == has(oldSelf.search)",
            "message": f"spec.search cannot be added or removed: {IMMUTABLE.split(': ', 1)[1]}",
        }
    ],
    "search": [_immutable("search")],
    "model": [_immutable("model")],
    "dataset": [
        _immutable("dataset"),
        {
            "rule": "has(self.train) || (has(self.mixture) && size(self.mixture) > 0)",
            "message": "set train (or mixture): there is no training data",
        },
    ],
    # dict(...) copies: a shared dict would be written as a YAML anchor and alias.
    "model.source": [dict(ONE_SOURCE)],
    "dataset.train": [dict(ONE_SOURCE)],
    "dataset.eval": [dict(ONE_SOURCE)],
    "dataset.mixture.[].train": [dict(ONE_SOURCE)],
    "dataset.mixture.[].eval": [dict(ONE_SOURCE)],
    "method": [_immutable("method")],
    "training": [
        _immutable("training"),
        {
            "rule": "!has(self.batchSize) || self.batchSize % self.gradientAccumulationSteps == 0",
            "message": "batchSize must be a multiple of gradientAccumulationSteps",
        },
        {
            "rule": "!has(self.batchSize) || !has(self.microBatchSize) || "
            "self.batchSize % (self.microBatchSize * self.gradientAccumulationSteps) == 0",
            "message": "batchSize must be a multiple of microBatchSize x gradientAccumulationSteps",
        },
    ],
}


def finetunejob_crd() -> dict[str, Any]:
    return build_crd(
        kind="FineTuneJob",
        plural="finetunejobs",
        short="ftj",
        spec=FineTuneJobSpec,
        status=FineTuneJobStatus,
        columns=COLUMNS,
        rules={**RULES, **FORMATS},
        doc="FineTuneJob fine-tunes a Qwen3 model with a PEFT method on GPU pods and reports progress.",
    )
