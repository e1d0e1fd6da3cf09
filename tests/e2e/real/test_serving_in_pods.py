"""A ModelDeployment serves the adapter the real-pod FineTuneJob trained: server pods become
Ready by their real probes (/healthz, /readyz), and a pod inside the cluster gets an answer
through the router Service (cluster DNS from CoreDNS, the ClusterIP through kube-proxy). A
second run's adapter then rolls the servers while a client in the cluster keeps asking: no
request fails (maxUnavailable 0, the servers' preStop drain, the router's one resend)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from real_helpers import UID, Release, Trained, ask_in_cluster, one_shot_pod, pod_logs

NAME = "faq-serve"
PORT = 8000


def manifest() -> dict[str, Any]:
    model = {
        "model": "/mnt/models/tiny-qwen3",
        "modelPvc": {"claimName": "models", "path": "tiny-qwen3"},
        "quantization": "none",
        "replicas": 1,
        "gpus": 0,  # CPU torch on the real node
    }
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME},
        "spec": {
            "models": [
                {"name": "large", **model, "adapter": {"fineTuneJob": "faq"}},
                {"name": "small", **model},
            ],
            "routing": {"strategy": "complexity"},
            "server": {"maxNewTokens": 8, "port": PORT},
        },
    }


@pytest.fixture(scope="module")
def served(
    kubectl: Any, release: Release, trained: Trained, wait_until: Callable[..., Any]
) -> dict[str, Any]:
    """The ModelDeployment of `trained`'s adapter, applied and Available: its status."""
    assert trained.status["phase"] == "Succeeded", "the FineTuneJob to serve did not succeed"
    ns = release.namespace
    kubectl.apply(manifest(), namespace=ns)

    def available() -> dict[str, Any] | None:
        status = kubectl.json("get", "mdep", NAME, "-n", ns).get("status") or {}
        return status if status.get("phase") == "Available" else None

    return dict(wait_until(available, timeout=600, what=f"ModelDeployment {NAME} Available"))


def test_modeldeployment_answers_through_the_router(
    kubectl: Any, release: Release, served: dict[str, Any], wait_until: Callable[..., Any]
) -> None:
    ns, status = release.namespace, served
    pods = kubectl.json("get", "pods", "-n", ns, "-l", f"kubetune.io/modeldeployment={NAME}")
    for pod in pods["items"]:
        container = pod["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert pod["status"]["containerStatuses"][0]["ready"] is True, pod["status"]
    endpoint = status["endpoint"]
    assert f"{NAME}-router" in endpoint, status
    answer = ask_in_cluster(kubectl, ns, "ask-router", endpoint, wait_until)
    assert answer["choices"][0]["message"]["content"] is not None, answer


# A client inside the cluster: asks the router for DURATION seconds, one request at a time,
# and prints one JSON line: answers per backend, failures (status or error), first/last time.
STEADY_CLIENT = """
import json, sys, time, urllib.error, urllib.request as u
url, body, duration = sys.argv[1], sys.argv[2].encode(), float(sys.argv[3])
counts, failures, start = {}, [], time.time()
while time.time() - start < duration:
    r = u.Request(url, data=body, headers={'Content-Type': 'application/json'})
    try:
        with u.urlopen(r, timeout=60) as answer:
            answer.read()
            who = answer.headers.get('x-kubetune-backend', '?')
            counts[who] = counts.get(who, 0) + 1
    except urllib.error.HTTPError as err:
        failures.append(f'{time.time() - start:.1f}s HTTP {err.code}: {err.read()[:200]!r}')
    except OSError as err:
        failures.append(f'{time.time() - start:.1f}s {err!r}')
    time.sleep(0.2)
print(json.dumps({'counts': counts, 'failures': failures, 'start': start, 'end': time.time()}))
"""
DURATION = 150


def test_a_new_run_rolls_the_servers_with_no_failed_request(
    kubectl: Any,
    release: Release,
    trained: Trained,
    served: dict[str, Any],
    wait_until: Callable[..., Any],
) -> None:
    """A second run of the FineTuneJob (its adapter in a new folder, a later completionTime,
    as a re-run writes them) rolls the `large` server Deployment while a client in the cluster
    keeps asking through the router: every request gets a 200, and the roll finishes while the
    client is still asking."""
    import shutil
    import time

    ns = release.namespace
    deployment = f"{NAME}-large"
    before = kubectl.json("get", "deployment", deployment, "-n", ns)
    old_revision = before["spec"]["template"]["metadata"]["annotations"]
    run2 = trained.adapter.parent.parent / f"{trained.name}-run-2" / "adapter"
    shutil.copytree(trained.adapter, run2)
    for path in (run2.parent, run2, *run2.rglob("*")):
        os.chown(path, UID, UID)
    endpoint = served["endpoint"]
    body = {"model": "large", "messages": [{"role": "user", "content": "如何申请信用卡？"}],
            "max_tokens": 4}  # fmt: skip
    url = endpoint + "/chat/completions"
    command = ["python", "-c", STEADY_CLIENT, url, json.dumps(body), str(DURATION)]
    kubectl.apply(one_shot_pod(ns, "steady-client", command))
    wait_until(
        lambda: (
            kubectl.json("get", "pod", "steady-client", "-n", ns)["status"].get("phase")
            == "Running"
        ),
        timeout=120,
        what="the steady client running",
    )
    time.sleep(10)  # some answers before the roll
    patch = {
        "status": {
            "output": {"adapterPath": f"pvc://output/{trained.name}-run-2/adapter"},
            "completionTime": "2030-01-01T00:00:00Z",
        }
    }
    kubectl("patch", "ftj", trained.name, "-n", ns, "--subresource=status", "--type=merge",
            "-p", json.dumps(patch))  # fmt: skip

    def rolled() -> bool:
        dep = kubectl.json("get", "deployment", deployment, "-n", ns)
        st = dep.get("status") or {}
        notes = dep["spec"]["template"]["metadata"]["annotations"]
        return bool(
            notes != old_revision
            and st.get("observedGeneration", 0) >= dep["metadata"]["generation"]
            and st.get("updatedReplicas") == st.get("replicas") == st.get("readyReplicas") == 1
        )

    wait_until(rolled, timeout=DURATION, what=f"{deployment} rolled to the new run's adapter")
    rolled_at = time.time()
    pods = kubectl.json("get", "pods", "-n", ns, "-l", "kubetune.io/model=large")["items"]
    args = [a for p in pods for a in p["spec"]["containers"][0]["args"]]
    assert any(f"{trained.name}-run-2/adapter" in a for a in args), args

    def client_done() -> str | None:
        phase = kubectl.json("get", "pod", "steady-client", "-n", ns)["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    assert wait_until(client_done, timeout=DURATION + 60, what="the steady client") == "Succeeded"
    log = pod_logs(kubectl, ns, "steady-client")
    report = json.loads(log.strip().splitlines()[-1])
    print(f"steady client during the roll: {report['counts']}, failures {report['failures']}")
    assert report["failures"] == [], report
    assert report["end"] > rolled_at, "the roll ended after the client stopped asking"
    assert report["counts"].get("large", 0) >= 10, report
