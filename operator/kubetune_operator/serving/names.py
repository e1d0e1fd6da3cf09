"""Names, labels and annotations of a ModelDeployment's children: pure and deterministic.

A model's Deployment and Service are `<mdep>-<model>`, the router's `<mdep>-router`; names
that would pass the 63-character DNS label limit are shortened with a hash, as
`kubetune_operator.names` does for FineTuneJobs. Called by `builders`, `plan`, `reconcile`
and `handlers`.
"""

from __future__ import annotations

from kubetune_api.names import (
    ANNOTATION_ADAPTER,
    ANNOTATION_ADAPTER_HASH,
    ANNOTATION_MDEP,
    API_VERSION,
    LABEL_MDEP,
    LABEL_MODEL,
)
from kubetune_api.names import MODELDEPLOYMENT_KIND as KIND
from kubetune_api.names import MODELDEPLOYMENT_PLURAL as PLURAL
from kubetune_operator import names as ftj_names

ROUTER = "router"
ANNOTATION_RUNTIME = f"{ftj_names.GROUP}/runtime"  # vllm-<version> on a vLLM pod template
NAME_LIMIT = 63


def child_name(mdep: str, model: str) -> str:
    """Deployment and Service of one model (`<mdep>-<model>`) or of the router."""
    name = ftj_names._bounded(mdep, f"-{model}", NAME_LIMIT)
    return name if name[0].isalpha() else f"m-{name}"[:NAME_LIMIT]


def adapters_config_name(mdep: str, model: str) -> str:
    """ConfigMap of one model's named adapters."""
    return child_name(mdep, f"{model}-adapters")


def router_name(mdep: str) -> str:
    return child_name(mdep, ROUTER)


def labels(mdep: str, model: str) -> dict[str, str]:
    """Labels of every child; the selector is the same without managed-by/component."""
    return {
        ftj_names.LABEL_MANAGED_BY: ftj_names.FIELD_MANAGER,
        ftj_names.LABEL_COMPONENT: "router" if model == ROUTER else "server",
        **selector(mdep, model),
    }


def selector(mdep: str, model: str) -> dict[str, str]:
    return {LABEL_MDEP: ftj_names.label_value(mdep), LABEL_MODEL: model}


__all__ = [
    "ANNOTATION_ADAPTER",
    "ANNOTATION_ADAPTER_HASH",
    "ANNOTATION_MDEP",
    "API_VERSION",
    "KIND",
    "LABEL_MDEP",
    "LABEL_MODEL",
    "PLURAL",
]
