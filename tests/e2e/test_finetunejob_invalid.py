"""Invalid FineTuneJobs: rejected by the API server at apply with the field path, or ending in
Failed with a message naming the field (InvalidSpec, or the scheduler's reason after
pendingTimeoutSeconds). None of them crashes or wedges the operator.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from operator_helpers import (
    OperatorProcess,
    children,
    create_pvcs,
    delete_pvs,
    event_reasons,
    operator,  # noqa: F401  (module fixture)
    wait_phase,
)

pytestmark = pytest.mark.e2e
Wait = Callable[..., Any]

VALID: dict[str, Any] = {
    "model": {"name": "Qwen/Qwen3-8B"},
    "dataset": {"train": {"pvc": {"claimName": "data", "path": "train.jsonl"}}},
    "method": {"type": "lora", "rank": 8},
    "training": {"epochs": 1, "microBatchSize": 4, "gradientAccumulationSteps": 2},
    "resources": {"gpusPerNode": 1},
    "output": {"pvc": {"claimName": "output"}},
}


def spec_with(path: str, value: Any) -> dict[str, Any]:
    """VALID with `a.b.c` set to value (None deletes it)."""
    spec = copy.deepcopy(VALID)
    *parents, leaf = path.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return spec


# (id, spec, what kubectl's error must contain)
REJECTED_AT_APPLY = [
    ("bad-method-enum", spec_with("method.type", "lora2"), ["spec.method.type", "Unsupported value"]),
    ("rank-zero", spec_with("method.rank", 0), ["spec.method.rank", "greater than or equal to 1"]),
    ("negative-lr", spec_with("training.learningRate", -1e-4), ["spec.training.learningRate"]),
    ("negative-epochs", spec_with("training.epochs", -3), ["spec.training.epochs"]),
    ("bad-precision", spec_with("training.precision", "int4"), ["spec.training.precision", "Unsupported value"]),
    ("zero-stage-one", spec_with("training.zeroStage", 1), ["spec.training.zeroStage"]),
    ("too-many-gpus", spec_with("resources.gpusPerNode", 64), ["spec.resources.gpusPerNode"]),
    ("missing-dataset-train", spec_with("dataset.train", None), ["spec.dataset", "no training data"]),
    ("missing-model", spec_with("model", None), ["spec.model", "Required value"]),
    ("two-sources", spec_with("dataset.train", {"pvc": {"claimName": "d"}, "uri": "s3://b/t.jsonl"}),
     ["spec.dataset.train", "exactly one of"]),
    ("batch-not-divisible", spec_with("training.batchSize", 30), ["spec.training", "multiple of"]),
    ("unknown-field", spec_with("training.learningrate", 1e-4), ['unknown field "spec.training.learningrate"']),
    ("negative-retries", spec_with("retry.maxRetries", -1), ["spec.retry.maxRetries"]),
]  # fmt: skip

# (id, spec, what status.message must contain)
INVALID_SPEC = [
    ("local-output-path", spec_with("output", {"path": "/tmp/out"}), "spec.output.path"),
    ("no-output", spec_with("output", None), "spec.output"),
    ("s3-dataset", spec_with("dataset.train", {"uri": "s3://bucket/train.jsonl"}), "spec.dataset.train.uri"),
    ("qlora-without-gpu", spec_with("resources.gpusPerNode", 0) | {"method": {"type": "qlora"}}, "spec.method.type"),
    ("gpu-in-resources", spec_with("resources.resources", {"limits": {"nvidia.com/gpu": 2}}),
     "spec.resources.resources.limits"),
    ("batch-vs-gpus", spec_with("training", {"batchSize": 6, "gradientAccumulationSteps": 1})
     | {"resources": {"gpusPerNode": 4}}, "spec.training.batchSize"),
]  # fmt: skip


def manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.fixture(scope="module")
def ns(kubectl: Any, operator: OperatorProcess, request: pytest.FixtureRequest) -> Any:  # noqa: F811
    name = "e2e-ftj-invalid"
    kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=true", "--timeout=60s")
    kubectl("create", "namespace", name)
    create_pvcs(kubectl, name, {"data", "output"})
    yield name
    kubectl("delete", "namespace", name, "--wait=false")
    delete_pvs(kubectl, name)


@pytest.mark.parametrize(
    ("case", "spec", "needles"), REJECTED_AT_APPLY, ids=[c[0] for c in REJECTED_AT_APPLY]
)
def test_rejected_at_apply_with_the_field_path(
    kubectl: Any, ns: str, case: str, spec: dict[str, Any], needles: list[str]
) -> None:
    result = kubectl(
        "apply", "-n", ns, "-f", "-", input=json.dumps(manifest(case, spec)), check=False
    )
    assert result.returncode != 0, f"{case} was accepted"
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.mark.parametrize(("case", "spec", "needle"), INVALID_SPEC, ids=[c[0] for c in INVALID_SPEC])
def test_operator_fails_invalid_specs_naming_the_field(
    kubectl: Any, ns: str, wait_until: Wait, case: str, spec: dict[str, Any], needle: str
) -> None:
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest(case, spec)))
    status = wait_phase(kubectl, ns, case, "Failed", wait_until)
    assert needle in status["message"], status["message"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and needle in failed["message"]
    assert children(kubectl, ns, case) == {}
    assert "InvalidSpec" in event_reasons(kubectl, ns, case)


def test_more_gpus_than_any_node_fails_after_the_pending_timeout(
    kubectl: Any, ns: str, wait_until: Wait
) -> None:
    spec = spec_with("resources.gpusPerNode", 12) | {"pendingTimeoutSeconds": 3}
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest("greedy", spec)))
    status = wait_phase(kubectl, ns, "greedy", "Failed", wait_until, timeout=60)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in status["message"]
    assert "pendingTimeoutSeconds" in status["message"]
    wait_until(
        lambda: "Job" not in children(kubectl, ns, "greedy"), what="the pending Job to be deleted"
    )


def test_immutable_training_and_the_operator_survives(
    kubectl: Any,
    ns: str,
    wait_until: Wait,
    operator: OperatorProcess,  # noqa: F811
) -> None:
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest("fixed", VALID)))
    wait_phase(kubectl, ns, "fixed", "Running", wait_until)
    patch = '{"spec": {"training": {"learningRate": 0.5}}}'
    result = kubectl("patch", "ftj", "fixed", "-n", ns, "--type=merge", "-p", patch, check=False)
    assert result.returncode != 0 and "spec.training is immutable" in result.stderr
    search = '{"spec": {"search": {"trials": 4, "space": {"rank": {"choices": [4, 8]}}}}}'
    result = kubectl("patch", "ftj", "fixed", "-n", ns, "--type=merge", "-p", search, check=False)
    assert result.returncode != 0 and "spec.search cannot be added or removed" in result.stderr
    assert operator.healthy()
    assert "kubetune_finetunejobs" in operator.metrics()
    assert "Traceback" not in operator.log_path.read_text()
