"""The shipped examples against a real API server: children, scheduling, columns, explain.

Each manifests/examples/finetunejob-*.yaml is applied (with its PVCs) and must produce exactly
its children (ServiceAccount, Role, RoleBinding, ConfigMap, Job; a headless Service for
multi-node), owned by the FineTuneJob, with pods bound to kwok GPU nodes holding the requested
GPUs; `kubectl get ftj` shows the printer columns and `kubectl explain` the descriptions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml
from operator_helpers import (
    EXAMPLES,
    OperatorProcess,
    children,
    claims_of,
    create_pvcs,
    delete_and_wait,
    delete_pvs,
    ftj,
    load_example,
    operator,  # noqa: F401  (module fixture)
    wait_phase,
    wait_pod_running,
)

pytestmark = pytest.mark.e2e
# A search example runs trials instead of attempts: test_finetunejob_search.py drives it; a
# queued one waits for Kueue: test_kueue.py drives it.
NAMES = sorted(
    p.stem.removeprefix("finetunejob-")
    for p in EXAMPLES.glob("finetunejob-*.yaml")
    if not {"search", "scheduling"} & set(yaml.safe_load(p.read_text())["spec"])
)


def faq_configmap(namespace: str) -> dict[str, Any]:
    rows = (
        '{"input": "用户：如何申请信用卡？\\nAI助手：", "target": "您可通过银行官网提交申请。"}\n'
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "faq-data", "namespace": namespace},
        "data": {"train.jsonl": rows, "eval.jsonl": rows},
    }


@pytest.mark.parametrize("example", NAMES)
def test_example_creates_exactly_its_children_and_schedules_on_gpus(
    example: str,
    operator: OperatorProcess,  # noqa: F811
    kubectl: Any,
    namespace: str,
    wait_until: Callable[..., Any],
) -> None:
    manifest = load_example(example)
    name, spec = manifest["metadata"]["name"], manifest["spec"]
    nodes, gpus = spec["resources"].get("nodes", 1), spec["resources"]["gpusPerNode"]
    create_pvcs(kubectl, namespace, claims_of(manifest))
    kubectl.apply(faq_configmap(namespace))
    try:
        kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / f"finetunejob-{example}.yaml"))
        pods = wait_pod_running(kubectl, namespace, name, 0, wait_until, count=nodes)
        status = wait_phase(kubectl, namespace, name, "Running", wait_until)

        expected = {
            "ServiceAccount": [f"{name}-trainer"],
            "Role": [f"{name}-trainer"],
            "RoleBinding": [f"{name}-trainer"],
            "ConfigMap": [f"{name}-a0"],
            "Job": [f"{name}-a0"],
        }
        if nodes > 1:
            expected["Service"] = [name]
        assert children(kubectl, namespace, name) == expected
        uid = ftj(kubectl, namespace, name)["metadata"]["uid"]
        for kind, names in expected.items():
            obj = kubectl.json("get", kind.lower(), names[0], "-n", namespace)
            assert obj["metadata"]["ownerReferences"][0]["uid"] == uid, kind

        assert len(pods) == nodes
        for pod in pods:
            assert pod["spec"]["nodeName"].startswith("kwok-gpu-"), pod["spec"]["nodeName"]
            limits = pod["spec"]["containers"][0]["resources"]["limits"]
            assert limits["nvidia.com/gpu"] == str(gpus)
        if nodes > 1:
            assert len({p["spec"]["nodeName"] for p in pods}) == nodes
            indexes = {
                p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                for p in pods
            }
            assert indexes == {str(i) for i in range(nodes)}

        config = yaml.safe_load(
            kubectl.json("get", "configmap", f"{name}-a0", "-n", namespace)["data"]["config.yaml"]
        )
        assert config["output"]["path"].startswith("/mnt/pvc/")
        assert status["attempts"][0]["jobName"] == f"{name}-a0"
        assert status["conditions"]

        header = kubectl("get", "ftj", "-n", namespace).stdout.splitlines()[0].split()
        assert header == ["NAME", "PHASE", "PROGRESS", "LOSS", "EVAL-LOSS", "ETA", "QUEUED", "AGE"]
        row = kubectl("get", "ftj", name, "-n", namespace, "--no-headers").stdout.split()
        assert row[:2] == [name, "Running"]
        wide = kubectl("get", "ftj", "-n", namespace, "-o", "wide").stdout.splitlines()[0].split()
        assert {"QUEUE", "METHOD", "MODEL", "GPUS", "STEP", "ATTEMPTS", "MESSAGE"} <= set(wide)
    finally:
        delete_and_wait(kubectl, namespace, name, wait_until)
        delete_pvs(kubectl, namespace)


def test_categories_short_name_and_explain(kubectl: Any) -> None:
    from operator_helpers import install_crd

    install_crd(kubectl)
    explained = kubectl("explain", "finetunejob.spec.training").stdout
    assert "Optimisation settings." in explained
    assert "microBatchSize" in explained and "Sequences per forward pass per process" in explained
    rank = kubectl("explain", "ftj.spec.method.rank").stdout
    assert "higher = more capacity and memory" in rank
    status = kubectl("explain", "ftj.status.attempts").stdout
    assert "changes" in status and "reason" in status
    resources = kubectl("api-resources", "--api-group=kubetune.io").stdout
    assert "ftj" in resources and "finetunejobs" in resources
    assert kubectl("get", "kubetune", "-A", check=False).returncode == 0  # the category
