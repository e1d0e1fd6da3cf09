"""The ModelDeployment CRD: printer columns and CEL rules layered on the generated schema.

Collected by `kubetune_api.crd` (make crds); also called by tests that install the CRD.
"""

from __future__ import annotations

from typing import Any

from kubetune_api.deployment import ModelDeploymentSpec, ModelDeploymentStatus
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
        "name": "Ready",
        "type": "string",
        "jsonPath": ".status.ready",
        "description": "Ready server pods / desired.",
    },
    {
        "name": "Endpoint",
        "type": "string",
        "jsonPath": ".status.endpoint",
        "description": "Router URL.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Strategy", "type": "string", "jsonPath": ".spec.routing.strategy", "priority": 1},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
]

RULES: dict[str, list[dict[str, Any]]] = {
    "models": [
        {
            "rule": "self.all(m, self.exists_one(n, n.name == m.name))",
            "message": "models[].name must be unique",
        },
    ],
    "models.[].adapter": [
        {
            "rule": "[has(self.fineTuneJob), has(self.path), has(self.pvc), has(self.uri)]"
            ".filter(x, x).size() == 1",
            "message": "set exactly one of fineTuneJob, path, pvc, uri",
        }
    ],
    "models.[].adapter.uri": [{"rule": URI_RULE, "message": URI_MESSAGE}],
    "models.[].model": [{"rule": f"!self.contains('://') || {URI_RULE}", "message": URI_MESSAGE}],
}


def modeldeployment_crd() -> dict[str, Any]:
    return build_crd(
        kind="ModelDeployment",
        plural="modeldeployments",
        short="mdep",
        spec=ModelDeploymentSpec,
        status=ModelDeploymentStatus,
        columns=COLUMNS,
        rules=RULES,
        doc="ModelDeployment serves Qwen3 models (INT8) behind an OpenAI-compatible complexity router.",
    )
