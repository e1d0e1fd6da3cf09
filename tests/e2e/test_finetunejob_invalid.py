"""Invalid FineTuneJobs: rejected by the API server at apply with the field path (with and
without `kubectl --validate=false`, which only stops kubectl's own field checks), or Failed
within 10 s with a message naming the field (InvalidSpec; Rejected when the API server refuses a
child; the scheduler's reason after pendingTimeoutSeconds). None stays Pending without a Job,
and none crashes or wedges the operator.
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
    ("negative-preemptions", spec_with("retry.maxPreemptions", -1), ["spec.retry.maxPreemptions"]),
    ("bad-claim-name", spec_with("dataset.train", {"pvc": {"claimName": "Bad_Name!"}}),
     ["spec.dataset.train.pvc.claimName", "should match"]),
    ("bad-output-claim", spec_with("output", {"pvc": {"claimName": "out put"}}),
     ["spec.output.pvc.claimName"]),
    ("parent-path", spec_with("dataset.train", {"pvc": {"claimName": "data", "path": "../x.jsonl"}}),
     ["spec.dataset.train.pvc.path", "'..' is refused"]),
    ("parent-output-path", spec_with("output", {"pvc": {"claimName": "output", "path": "a/../../b"}}),
     ["spec.output.pvc.path", "'..' is refused"]),
    ("bad-secret-name", spec_with("model", {"name": "m", "tokenSecretRef": {"name": "HF_TOKEN"}}),
     ["spec.model.tokenSecretRef.name"]),
    ("bad-configmap-name", spec_with("dataset.eval", {"configMap": {"name": "Eval Data", "key": "e"}}),
     ["spec.dataset.eval.configMap.name"]),
    ("bad-configmap-key", spec_with("dataset.eval", {"configMap": {"name": "eval", "key": "a/b"}}),
     ["spec.dataset.eval.configMap.key"]),
    ("bad-selector-key", spec_with("resources.nodeSelector", {"a b": "x"}),
     ["spec.resources.nodeSelector", "keys must be Kubernetes names"]),
    ("bad-selector-value", spec_with("resources.nodeSelector", {"zone": "not ok"}),
     ["spec.resources.nodeSelector.zone"]),
    ("memory-lots", spec_with("resources.resources", {"requests": {"memory": "lots"}}),
     ["spec.resources.resources.requests.memory"]),
    ("bad-resource-name", spec_with("resources.resources", {"limits": {"my cpu": 1}}),
     ["spec.resources.resources.limits", "keys must be Kubernetes names"]),
    ("bad-image", spec_with("resources.image", "Trainer Image:latest"), ["spec.resources.image"]),
    ("exists-with-value", spec_with("resources.tolerations", [{"operator": "Exists", "value": "x"}]),
     ["spec.resources.tolerations[0]", "value must be empty"]),
    ("equal-without-key", spec_with("resources.tolerations", [{"value": "x"}]),
     ["spec.resources.tolerations[0]", "operator must be Exists"]),
    ("seconds-without-noexecute",
     spec_with("resources.tolerations", [{"key": "k", "operator": "Exists", "tolerationSeconds": 5}]),
     ["spec.resources.tolerations[0]", "NoExecute"]),
    ("gs-output", spec_with("output", {"uri": "gs://bucket/out"}), ["spec.output.uri", "only file://"]),
    ("https-output", spec_with("output", {"uri": "https://example.com/out"}), ["spec.output.uri"]),
    ("https-dataset", spec_with("dataset.train", {"uri": "https://example.com/t.jsonl"}),
     ["spec.dataset.train.uri", "s3://bucket/key"]),
    ("zero-grace", spec_with("resources.terminationGracePeriodSeconds", 0),
     ["spec.resources.terminationGracePeriodSeconds"]),
]  # fmt: skip
# --validate=false drops unknown fields instead of refusing them; the schema still holds
STILL_REJECTED = [c for c in REJECTED_AT_APPLY if c[0] != "unknown-field"]

# (id, spec, what status.message must contain)
INVALID_SPEC = [
    ("local-output-path", spec_with("output", {"path": "/tmp/out"}), "spec.output.path"),
    ("no-output", spec_with("output", None), "spec.output"),
    ("file-dataset", spec_with("dataset.train", {"uri": "file:///data/train.jsonl"}), "spec.dataset.train.uri"),
    ("qlora-without-gpu", spec_with("resources.gpusPerNode", 0) | {"method": {"type": "qlora"}}, "spec.method.type"),
    ("gpu-in-resources", spec_with("resources.resources", {"limits": {"nvidia.com/gpu": 2}}),
     "spec.resources.resources.limits"),
    ("batch-vs-gpus", spec_with("training", {"batchSize": 6, "gradientAccumulationSteps": 1})
     | {"resources": {"gpusPerNode": 4}}, "spec.training.batchSize"),
    ("file-output", spec_with("output", {"uri": "file:///tmp/out"}), "spec.output.uri"),
]  # fmt: skip

# (id, spec, what status.message must contain): valid for the schema, refused by the API server
# when the operator applies the Job (422), so Failed/Rejected with the API server's message
REFUSED_CHILD = [
    ("requests-over-limits", spec_with("resources.resources",
     {"requests": {"cpu": "4"}, "limits": {"cpu": "2"}}), "must be less than or equal to cpu limit"),
    ("extended-without-limit", spec_with("resources.resources",
     {"requests": {"example.com/dongle": "1"}}), "Limit must be set"),
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


@pytest.mark.parametrize(
    ("case", "spec", "needles"), STILL_REJECTED, ids=[c[0] for c in STILL_REJECTED]
)
def test_rejected_without_client_validation(
    kubectl: Any, ns: str, case: str, spec: dict[str, Any], needles: list[str]
) -> None:
    body = json.dumps(manifest(f"{case}-nv", spec))
    result = kubectl("apply", "--validate=false", "-n", ns, "-f", "-", input=body, check=False)
    assert result.returncode != 0, f"{case} was accepted with --validate=false"
    assert needles[0] in result.stderr, result.stderr


@pytest.mark.parametrize(("case", "spec", "needle"), INVALID_SPEC, ids=[c[0] for c in INVALID_SPEC])
def test_operator_fails_invalid_specs_naming_the_field(
    kubectl: Any, ns: str, wait_until: Wait, case: str, spec: dict[str, Any], needle: str
) -> None:
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest(case, spec)))
    status = wait_phase(kubectl, ns, case, "Failed", wait_until, timeout=10)
    assert needle in status["message"], status["message"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and needle in failed["message"]
    assert children(kubectl, ns, case) == {}
    assert "InvalidSpec" in event_reasons(kubectl, ns, case)


@pytest.mark.parametrize(
    ("case", "spec", "needle"), REFUSED_CHILD, ids=[c[0] for c in REFUSED_CHILD]
)
def test_a_child_the_api_server_refuses_fails_the_job(
    kubectl: Any, ns: str, wait_until: Wait, case: str, spec: dict[str, Any], needle: str
) -> None:
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest(case, spec)))
    status = wait_phase(kubectl, ns, case, "Failed", wait_until, timeout=10)
    assert needle in status["message"], status["message"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "Rejected" and f"Job {case}-a0" in failed["message"]
    assert status["attempts"][0]["result"] == "Rejected"
    assert "Job" not in children(kubectl, ns, case)
    assert "Rejected" in event_reasons(kubectl, ns, case)


def test_nothing_is_left_pending_without_a_job(kubectl: Any, ns: str) -> None:
    for item in kubectl.json("get", "finetunejobs", "-n", ns)["items"]:
        phase = (item.get("status") or {}).get("phase")
        name = item["metadata"]["name"]
        assert phase != "Pending" or "Job" in children(kubectl, ns, name), name


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
