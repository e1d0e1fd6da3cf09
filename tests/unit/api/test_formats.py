"""Kubernetes formats in the FineTuneJob schema: names, label keys and values, quantities,
images, paths and the output URI are refused with their field path, good values pass."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune_api.errors import ConfigError
from kubetune_operator.finetune.validation import parse_spec

VALID: dict[str, Any] = {
    "model": {"name": "Qwen/Qwen3-8B", "tokenSecretRef": {"name": "hf-token"}},
    "dataset": {"train": {"pvc": {"claimName": "data.v1", "path": "faq/train.jsonl"}}},
    "resources": {
        "gpusPerNode": 1,
        "image": "registry.example.com:5000/kubetune/trainer:0.1.0",
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}],
        "resources": {"requests": {"cpu": "500m", "memory": "64Gi"}, "limits": {"cpu": 8}},
    },
    "output": {"pvc": {"claimName": "out"}},
}


def with_value(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(VALID)
    *parents, leaf = path.split(".")
    node = spec
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[leaf] = value
    return spec


def test_valid_formats_pass() -> None:
    parse_spec(VALID)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("dataset.train.pvc.claimName", "Bad_Name!", "spec.dataset.train.pvc.claimName"),
        ("dataset.train.pvc.path", "../../etc/passwd", "spec.dataset.train.pvc.path"),
        ("output.pvc.path", "runs/../..", "spec.output.pvc.path"),
        ("model.tokenSecretRef.name", "Token", "spec.model.tokenSecretRef.name"),
        ("resources.nodeSelector", {"a b": "x"}, "spec.resources.nodeSelector"),
        ("resources.nodeSelector", {"zone": "not ok"}, "spec.resources.nodeSelector.zone"),
        ("resources.resources.requests", {"memory": "lots"}, "spec.resources.resources"),
        ("resources.resources.limits", {"cpu": -1}, "spec.resources.resources.limits"),
        ("resources.image", "Trainer Image", "spec.resources.image"),
        ("resources.tolerations", [{"operator": "Exists", "value": "x"}], "spec.resources"),
        ("resources.tolerations", [{"value": "x"}], "spec.resources.tolerations"),
        ("output", {"uri": "gs://bucket/out"}, "spec.output.uri"),
        ("dataset.train", {"uri": "https://host/x.jsonl"}, "spec.dataset.train.uri"),
    ],
)
def test_bad_formats_name_the_field(path: str, value: Any, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_spec(with_value(path, value))
    assert any(p.startswith(field) for p in err.value.problems), err.value.problems
