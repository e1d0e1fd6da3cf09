"""Operator HA and the trainer-status policy, with the chart's own arguments and tokens.

A release with `replicaCount: 2` (kopf peering, `--priority=oldest`, the peering CRDs and the
trainer-status ValidatingAdmissionPolicy); two `kubetune operator` processes with that
Deployment's args and env, each authenticated only by a token of the chart's ServiceAccount, as
two replicas would be. Exactly one reconciles a FineTuneJob (the other's reconcile count stays
0); SIGKILL the active one in the middle of the lifecycle, and the other takes over within the
peering lifetime and finishes it (a preemption on the way: it spends no retry). A trainer token
may patch status.progress and status.metrics and nothing else.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_helpers import (
    OperatorProcess,
    create_pvcs,
    delete_pvs,
    finish_pod,
    install_crd,
    status_of,
    termination,
    trainer_pods,
    wait_phase,
    wait_pod_running,
)
from test_helm import CHART, Release, _helm_runner, ftj_manifest

pytestmark = pytest.mark.e2e
RELEASE = "kubetune-ha"
TAKEOVER_LIMIT = 40.0  # seconds: the peering lifetime (15) plus a re-list, with margin
Wait = Callable[..., Any]


@pytest.fixture(scope="module")
def release(cluster: Any, kubectl: Any) -> Iterator[Release]:
    install_crd(kubectl)
    helm = _helm_runner(cluster)
    namespace = f"kubetune-ha-{uuid.uuid4().hex[:6]}"
    out = helm(
        "install", RELEASE, str(CHART), "--namespace", namespace, "--create-namespace",
        "--set", "replicaCount=2", "--set", "crds.enabled=false",
        "--set", "defaults.trainerImage=kubetune-trainer:e2e",
    )  # fmt: skip
    yield Release(namespace, out.stdout, helm)
    helm("uninstall", RELEASE, "--namespace", namespace, check=False)
    kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found")


def kubeconfig_for(kubectl: Any, account: str, namespace: str, path: Path) -> Path:
    """A kubeconfig holding only a token of one ServiceAccount."""
    token = kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    cluster = kubectl.json("config", "view", "--raw", "--minify")["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "e2e", "user": account}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def replicas(
    cluster: Any, kubectl: Any, release: Release, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[OperatorProcess]]:
    folder = tmp_path_factory.mktemp("ha")
    kubeconfig = kubeconfig_for(kubectl, RELEASE, release.namespace, folder / "kubeconfig")
    container = chart_deployment_of(release)["spec"]["template"]["spec"]["containers"][0]
    args = [a for a in container["args"][1:] if not a.startswith(("--metrics-", "--health-"))]
    assert "--priority=oldest" in args and any(a.startswith("--peering=") for a in args)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    procs = []
    for pod in ("replica-a", "replica-b"):
        process_env = {**cluster.env(), **env, "KUBECONFIG": str(kubeconfig), "POD_ID": pod}
        procs.append(OperatorProcess(process_env, folder / f"{pod}.log", extra_args=args))
        procs[-1].start()
        time.sleep(1.0)  # distinct start times: replica-a is the oldest, so the active one
    yield procs
    for proc in procs:
        proc.stop()
        print(f"--- {proc.log_path.name} ---\n{proc.log_tail(30)}")


def retried(status: dict[str, Any]) -> dict[str, Any] | None:
    """The status once attempt 0 has a result and attempt 1 exists, else None."""
    attempts = status.get("attempts") or []
    return status if len(attempts) > 1 and attempts[0].get("result") else None


def chart_deployment_of(release: Release) -> dict[str, Any]:
    manifest = release.helm("get", "manifest", RELEASE, "--namespace", release.namespace).stdout
    return next(d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "Deployment")


def test_one_replica_reconciles_and_the_other_takes_over(
    kubectl: Any, namespace: str, replicas: list[OperatorProcess], wait_until: Wait
) -> None:
    active, standby = replicas
    create_pvcs(kubectl, namespace, {"models", "data", "output"})
    try:
        kubectl.apply(ftj_manifest("ha") | {"spec": ftj_manifest("ha")["spec"] | {
            "retry": {"maxRetries": 0}}}, namespace=namespace)  # fmt: skip
        pod = wait_pod_running(kubectl, namespace, "ha", 0, wait_until)[0]
        wait_phase(kubectl, namespace, "ha", "Running", wait_until)
        assert active.reconciles() > 0 and standby.reconciles() == 0
        active.kill()
        killed = time.monotonic()
        message = termination("Preempted", 6, "SIGTERM: checkpoint written", step=3)
        finish_pod(kubectl, namespace, pod["metadata"]["name"], 6, message)
        status = wait_until(  # Retrying, or already Running: kwok starts attempt 1's pod at once
            lambda: retried(status_of(kubectl, namespace, "ha")), timeout=90, what="a retry"
        )
        took = time.monotonic() - killed
        assert took < TAKEOVER_LIMIT, f"the standby took {took:.1f}s to take over"
        assert status["phase"] in ("Retrying", "Running"), status
        assert status["attempts"][0]["result"] == "Preempted"
        second = wait_pod_running(kubectl, namespace, "ha", 1, wait_until)[0]
        finish_pod(kubectl, namespace, second["metadata"]["name"], 0)
        status = wait_phase(kubectl, namespace, "ha", "Succeeded", wait_until)
        assert [a["result"] for a in status["attempts"]] == ["Preempted", "Succeeded"]
        assert standby.reconciles() > 0
        assert len(trainer_pods(kubectl, namespace, "ha")) == 2  # one pod per attempt
        print(f"takeover after SIGKILL of the active replica: {took:.1f}s")
    finally:
        kubectl("delete", "finetunejobs", "--all", "-n", namespace, "--wait=false")
        delete_pvs(kubectl, namespace)


def test_trainer_token_may_write_only_progress_and_metrics(
    kubectl: Any,
    namespace: str,
    replicas: list[OperatorProcess],
    tmp_path: Path,
    wait_until: Wait,
) -> None:
    """The chart's ValidatingAdmissionPolicy against the trainer ServiceAccount the operator made."""
    create_pvcs(kubectl, namespace, {"models", "data", "output"})
    kubectl.apply(ftj_manifest("guarded"), namespace=namespace)
    wait_until(  # kwok starts the pod at once, so Pending may last less than one poll
        lambda: status_of(kubectl, namespace, "guarded").get("phase") in ("Pending", "Running"),
        what="FineTuneJob guarded reconciled (phase Pending or Running)",
    )
    account = "guarded-trainer"  # names.trainer_account_name
    wait_until(  # the Job is applied after the trainer's RBAC
        lambda: kubectl("get", "job", "guarded-a0", "-n", namespace, check=False).returncode == 0,
        what="the Job (after the trainer RBAC)",
    )
    config = kubeconfig_for(kubectl, account, namespace, tmp_path / "trainer")

    def patch(status: dict[str, Any]) -> Any:
        return kubectl(
            "--kubeconfig", str(config), "patch", "ftj", "guarded", "-n", namespace,
            "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}),
            check=False,
        )  # fmt: skip

    allowed = patch({"progress": {"step": 3, "totalSteps": 9}, "metrics": {"trainLoss": 1.25}})
    assert allowed.returncode == 0, allowed.stderr
    for field, value in (
        ("phase", "Succeeded"),
        ("attempts", None),
        ("output", {"adapterPath": "pvc://someone-else/adapter"}),
        ("message", "all good"),
    ):
        refused = patch({field: value})
        assert refused.returncode != 0, f"a trainer token changed status.{field}"
        assert f"status.{field} is the operator's" in refused.stderr, refused.stderr
    status = kubectl.json("get", "ftj", "guarded", "-n", namespace)["status"]
    assert status["phase"] in ("Pending", "Running") and status["progress"]["step"] == 3
    assert status["attempts"][0]["jobName"] == "guarded-a0"
    kubectl("delete", "finetunejobs", "--all", "-n", namespace, "--wait=false")
    delete_pvs(kubectl, namespace)
