"""A ModelDeployment serves the adapter the real-pod FineTuneJob trained: server pods become
Ready by their real probes (/healthz, /readyz), and a pod inside the cluster gets an answer
through the router Service (cluster DNS from CoreDNS, the ClusterIP through kube-proxy)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from real_helpers import Release, Trained, run_pod

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


def test_modeldeployment_answers_through_the_router(
    kubectl: Any, release: Release, trained: Trained, wait_until: Callable[..., Any]
) -> None:
    assert trained.status["phase"] == "Succeeded", "the FineTuneJob to serve did not succeed"
    ns = release.namespace
    kubectl.apply(manifest(), namespace=ns)

    def available() -> dict[str, Any] | None:
        status = kubectl.json("get", "mdep", NAME, "-n", ns).get("status") or {}
        return status if status.get("phase") == "Available" else None

    status = wait_until(available, timeout=600, what=f"ModelDeployment {NAME} Available")
    pods = kubectl.json("get", "pods", "-n", ns, "-l", f"kubetune.io/modeldeployment={NAME}")
    for pod in pods["items"]:
        container = pod["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert pod["status"]["containerStatuses"][0]["ready"] is True, pod["status"]
    endpoint = status["endpoint"]
    assert f"{NAME}-router" in endpoint, status
    body = {
        "model": "large",
        "messages": [{"role": "user", "content": "如何申请信用卡？"}],
        "max_tokens": 8,
    }
    script = (
        "import json, sys, urllib.request as u;"
        f"r = u.Request({endpoint + '/chat/completions'!r}, data=sys.argv[1].encode(),"
        " headers={'Content-Type': 'application/json'});"
        "print(u.urlopen(r, timeout=120).read().decode())"
    )
    phase, log = run_pod(
        kubectl, ns, "ask-router", ["python", "-c", script, json.dumps(body)], wait_until
    )
    assert phase == "Succeeded", log
    answer = json.loads(log.strip().splitlines()[-1])
    assert answer["choices"][0]["message"]["content"] is not None, answer
