"""Helpers of the real-node tier (tests/e2e/real): names of our images, manifests, readers.

Imported by tests/e2e/real/conftest.py and its tests; standard library, pytest and PyYAML only.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kubetune"
CRDS = REPO / "manifests" / "crds"
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
OPERATOR_IMAGE = f"ghcr.io/kubetune/operator:{APP_VERSION}"  # the chart's default
RUNTIME_IMAGE = f"ghcr.io/kubetune/trainer:{APP_VERSION}"  # defaults.trainerImage / serverImage
REAL_LABEL = "kubetune.io/real-node"
RELEASE = "kubetune"
UID = 1000  # the images' user; trainer and server pods run as it
Kubectl = Any  # tests/e2e/conftest.py's Kubectl


@dataclass(frozen=True)
class Release:
    namespace: str
    deployment: str
    helm: Callable[..., subprocess.CompletedProcess[str]]


@dataclass(frozen=True)
class Volumes:
    """Host folders behind the claims; what a pod writes there is read here."""

    root: Path

    def path(self, claim: str) -> Path:
        return self.root / claim


def pod_logs(kubectl: Kubectl, ns: str, pod: str, container: str | None = None) -> str:
    args = ["logs", pod, "-n", ns, "--tail=200"] + (["-c", container] if container else [])
    result = kubectl(*args, check=False)
    return str(result.stdout + result.stderr)


def one_shot_pod(ns: str, name: str, command: list[str]) -> dict[str, Any]:
    """A pod of the runtime image that runs `command` once as uid 1000, without API access."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": UID},
            "containers": [{"name": "main", "image": RUNTIME_IMAGE, "command": command}],
        },
    }


def run_pod(
    kubectl: Kubectl,
    ns: str,
    name: str,
    command: list[str],
    wait_until: Callable[..., Any],
    timeout: float = 180,
) -> tuple[str, str]:
    """A one-shot pod of the runtime image; returns its phase and its log."""
    kubectl.apply(one_shot_pod(ns, name, command))

    def done() -> str | None:
        phase = kubectl.json("get", "pod", name, "-n", ns)["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_until(done, timeout=timeout, what=f"pod {name} to finish")
    return str(phase), pod_logs(kubectl, ns, name)


def ftj_manifest(name: str, train: str = "faq/train.jsonl", **training: Any) -> dict[str, Any]:
    """A CPU FineTuneJob of the tiny Qwen3 on the `models`/`data`/`output` claims."""
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "name": "tiny-qwen3",
                "source": {"pvc": {"claimName": "models", "path": "tiny-qwen3"}},
            },
            "dataset": {
                "train": {"pvc": {"claimName": "data", "path": train}},
                "eval": {"pvc": {"claimName": "data", "path": "faq/eval.jsonl"}},
            },
            "method": {"type": "lora", "rank": 8},
            "training": {
                "epochs": 1,
                "microBatchSize": 4,
                "learningRate": 1e-3,
                "precision": "fp32",
                "maxSteps": 48,
                "evalEverySteps": 16,
                "saveEverySteps": 16,
                **training,
            },
            "resources": {"gpusPerNode": 0},
            "retry": {"maxRetries": 0},
            "output": {"pvc": {"claimName": "output", "path": name}},
        },
    }


def printed_row(kubectl: Kubectl, ns: str, name: str) -> dict[str, str]:
    """`kubectl get ftj NAME` as column -> value (cells cut at the header's offsets)."""
    header, row = kubectl("get", "ftj", name, "-n", ns).stdout.splitlines()[:2]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    bounds = [*starts[1:], max(len(row), len(header)) + 1]
    return {header[s:e].strip(): row[s:e].strip() for s, e in zip(starts, bounds, strict=True)}


@dataclass
class Trained:
    """The tier's one successful FineTuneJob: what `kubectl get ftj` showed while it ran."""

    name: str
    status: dict[str, Any]
    rows: list[dict[str, str]]
    logs: str
    adapter: Path


def ask_in_cluster(
    kubectl: Kubectl, ns: str, pod: str, endpoint: str, wait_until: Callable[..., Any]
) -> dict[str, Any]:
    """One chat request to `endpoint` (an OpenAI base URL) from a pod inside the cluster, as
    model `large`; asserts the pod succeeded and returns the parsed answer.

    A refused connection is tried again for up to 30 s, as a client of a new Service would: a
    Deployment's pod is Ready (so the ModelDeployment Available) a moment before kube-proxy has
    the Service's new endpoint in its rules, and until then the ClusterIP refuses (seen in CI).
    Any other failure, and an HTTP error, ends the pod Failed at once."""
    body = {
        "model": "large",
        "messages": [{"role": "user", "content": "如何申请信用卡？"}],
        "max_tokens": 8,
    }
    script = f"""
import sys, time, urllib.error, urllib.request as u
request = u.Request({endpoint + "/chat/completions"!r}, data=sys.argv[1].encode(),
                    headers={{'Content-Type': 'application/json'}})
deadline = time.time() + 30
while True:
    try:
        print(u.urlopen(request, timeout=120).read().decode())
        break
    except urllib.error.URLError as err:
        refused = isinstance(err.reason, ConnectionRefusedError)
        if not refused or time.time() > deadline:
            raise
        print(f'refused, trying again: {{err}}', file=sys.stderr)
        time.sleep(1)
"""
    phase, log = run_pod(kubectl, ns, pod, ["python", "-c", script, json.dumps(body)], wait_until)
    assert phase == "Succeeded", log
    answer: dict[str, Any] = json.loads(log.strip().splitlines()[-1])
    return answer
