"""Helpers for the FineTuneJob e2e tests: the operator as a subprocess, PVCs, a fake kubelet.

- `operator` (module-scoped fixture): installs the CRD, runs `kubetune operator` as a subprocess
  against the test cluster (its log is printed when a test fails), stops it afterwards.
- `create_pvcs`: PersistentVolumes (hostPath, pre-bound) and claims, so trainer pods schedule.
- `finish_pod` / `wait_pod_running`: drive a trainer pod the way a kubelet would.
- small readers: `ftj`, `children`, `trainer_pods`, `event_reasons`, `wait_phase`.
Imported by tests/e2e/test_finetunejob*.py and bench/operator_scale.py; standard library,
pytest and PyYAML only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "manifests" / "crds" / "kubetune.io_finetunejobs.yaml"
EXAMPLES = REPO / "manifests" / "examples"
LABEL = "kubetune.io/finetunejob"
TRAINER_IMAGE = "kubetune-trainer:e2e"  # never pulled: kwok nodes run no containers
CHILD_KINDS = ("serviceaccounts", "roles", "rolebindings", "configmaps", "services", "jobs")
Kubectl = Any  # tests/e2e/conftest.py's Kubectl (not importable as a module)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`kubetune operator` in a subprocess, with its health and metrics ports."""

    def __init__(self, env: dict[str, str], log_path: Path, extra_args: list[str] | None = None):
        self.env = {**env, "PYTHONPATH": f"{REPO / 'operator'}{os.pathsep}{REPO / 'trainer_image'}"}
        self.log_path = log_path
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.health_port = self.metrics_port = 0

    def start(self, timeout: float = 60) -> None:
        self.health_port, self.metrics_port = free_port(), free_port()
        peering = any(a.startswith("--peering") for a in self.extra_args)
        command = [
            sys.executable, "-m", "kubetune_cli.main", "operator",
            *([] if peering else ["--standalone"]),
            "--health-port", str(self.health_port), "--metrics-port", str(self.metrics_port),
            "--trainer-image", TRAINER_IMAGE, *self.extra_args,
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(command, env=self.env, cwd=REPO, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"operator did not become healthy:\n{self.log_tail()}")
            time.sleep(0.2)

    def _get(self, port: int, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as rsp:
            return str(rsp.read().decode())

    def healthy(self) -> bool:
        try:
            self._get(self.health_port, "/healthz")
        except OSError:
            return False
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> str:
        return self._get(self.metrics_port, "/metrics")

    def rss_bytes(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as when a node dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def reconciles(self) -> int:
        """FineTuneJob reconciles this process has run (its metrics)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("kubetune_operator_reconcile_duration_seconds_count"):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def install_crd(kubectl: Kubectl) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "crd/finetunejobs.kubetune.io", "--timeout=60s")
    for _ in range(50):  # discovery catches up a little after Established
        if kubectl("get", "finetunejobs", "-A", check=False).returncode == 0:
            return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def operator(
    cluster: Any, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator under test, one per test module; its log tail is shown on failure."""
    install_crd(kubectl)
    proc = OperatorProcess(cluster.env(), tmp_path_factory.mktemp("operator") / "operator.log")
    proc.start()
    yield proc
    proc.stop()
    print(f"--- operator log ({proc.log_path}) ---\n{proc.log_tail()}")


# --- volumes ------------------------------------------------------------------------------


def claims_of(manifest: dict[str, Any]) -> set[str]:
    """Every PVC a FineTuneJob manifest names."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "claimName" in node:
                found.add(node["claimName"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(manifest.get("spec", {}))
    return found


def create_pvcs(kubectl: Kubectl, namespace: str, claims: set[str]) -> None:
    """A pre-bound hostPath PV per claim (cluster-scoped, named after the namespace) + the PVC."""
    docs: list[dict[str, Any]] = []
    for claim in sorted(claims):
        pv = f"{namespace}-{claim}"[:253]
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv, "labels": {"kubetune.io/e2e-namespace": namespace}},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": ["ReadWriteMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": {"path": f"/tmp/kubetune-e2e/{pv}"},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            }
        )
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": namespace},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "volumeName": pv,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        )
    if docs:
        kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def delete_pvs(kubectl: Kubectl, namespace: str) -> None:
    kubectl(
        "delete", "pv", "-l", f"kubetune.io/e2e-namespace={namespace}", "--wait=false",
        "--ignore-not-found", check=False,
    )  # fmt: skip


# --- reading -------------------------------------------------------------------------------


def load_example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((EXAMPLES / f"finetunejob-{name}.yaml").read_text()))


def ftj(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return dict(kubectl.json("get", "finetunejob", name, "-n", namespace))


def status_of(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return dict(ftj(kubectl, namespace, name).get("status") or {})


def wait_phase(
    kubectl: Kubectl,
    namespace: str,
    name: str,
    phase: str,
    wait_until: Callable[..., Any],
    timeout: float = 60,
) -> dict[str, Any]:
    """Wait for status.phase; returns the status."""

    def reached() -> dict[str, Any] | None:
        status = status_of(kubectl, namespace, name)
        return status if status.get("phase") == phase else None

    return dict(wait_until(reached, timeout=timeout, what=f"FineTuneJob {name} phase {phase}"))


def children(kubectl: Kubectl, namespace: str, name: str) -> dict[str, list[str]]:
    """Kind -> names of the objects labelled as this FineTuneJob's children."""
    out: dict[str, list[str]] = {}
    listed = kubectl.json("get", ",".join(CHILD_KINDS), "-n", namespace, "-l", f"{LABEL}={name}")
    for item in listed["items"]:
        out.setdefault(item["kind"], []).append(item["metadata"]["name"])
    return {kind: sorted(names) for kind, names in out.items()}


def trainer_pods(
    kubectl: Kubectl, namespace: str, name: str, attempt: int | None = None
) -> list[dict[str, Any]]:
    selector = f"{LABEL}={name}" + (
        f",kubetune.io/attempt={attempt}" if attempt is not None else ""
    )
    pods = kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"]
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def wait_pod_running(
    kubectl: Kubectl,
    namespace: str,
    name: str,
    attempt: int,
    wait_until: Callable[..., Any],
    count: int = 1,
    timeout: float = 60,
) -> list[dict[str, Any]]:
    """Wait for `count` Running trainer pods of an attempt (kwok marks bound pods Running)."""

    def running() -> list[dict[str, Any]] | None:
        pods = trainer_pods(kubectl, namespace, name, attempt)
        ok = [p for p in pods if p["status"].get("phase") == "Running"]
        return ok if len(ok) >= count else None

    return list(
        wait_until(running, timeout=timeout, what=f"{count} running pod(s) of {name}-a{attempt}")
    )


def event_reasons(kubectl: Kubectl, namespace: str, name: str) -> list[str]:
    selector = f"involvedObject.kind=FineTuneJob,involvedObject.name={name}"
    items = kubectl.json("get", "events", "-n", namespace, "--field-selector", selector)["items"]
    return [e["reason"] for e in sorted(items, key=lambda e: e.get("firstTimestamp") or "")]


# --- the fake kubelet ------------------------------------------------------------------------


def finish_pod(
    kubectl: Kubectl,
    namespace: str,
    pod: str,
    exit_code: int,
    message: str = "",
    reason: str | None = None,
) -> None:
    """Terminate the trainer container as a kubelet would: exit code, reason, termination message."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    terminated = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "message": message,
        "startedAt": now,
        "finishedAt": now,
    }
    status = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
        "containerStatuses": [
            {
                "name": "trainer",
                "image": TRAINER_IMAGE,
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {"running": None, "terminated": terminated},
            }
        ],
    }
    kubectl(
        "patch", "pod", pod, "-n", namespace, "--subresource=status", "--type=strategic",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip


def set_waiting(kubectl: Kubectl, namespace: str, pod: str, reason: str, message: str) -> None:
    """A container stuck before start (ImagePullBackOff, ...), as the kubelet reports it."""
    status = {
        "phase": "Pending",
        "containerStatuses": [
            {
                "name": "trainer",
                "image": TRAINER_IMAGE,
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"running": None, "waiting": {"reason": reason, "message": message}},
            }
        ],
    }
    kubectl(
        "patch", "pod", pod, "-n", namespace, "--subresource=status", "--type=strategic",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip


def termination(reason: str, code: int, message: str, **fields: Any) -> str:
    """The trainer's one-line JSON termination reason."""
    return json.dumps({"reason": reason, "message": message, "exitCode": code, **fields})


def delete_and_wait(
    kubectl: Kubectl, namespace: str, name: str, wait_until: Callable[..., Any], timeout: float = 60
) -> None:
    """Delete a FineTuneJob and wait until its pods are gone (frees the fake GPUs)."""
    kubectl("delete", "finetunejob", name, "-n", namespace, "--wait=true", "--timeout=60s")
    wait_until(
        lambda: not trainer_pods(kubectl, namespace, name),
        timeout=timeout,
        what=f"pods of {name} to be garbage-collected",
    )


def printed_row(kubectl: Kubectl, namespace: str, name: str, wide: bool = False) -> dict[str, str]:
    """`kubectl get ftj NAME` as column -> value, cut at the header's offsets (empty cells stay '')."""
    args = ["get", "ftj", name, "-n", namespace] + (["-o", "wide"] if wide else [])
    header, row = kubectl(*args).stdout.splitlines()[:2]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    bounds = [*starts[1:], max(len(row), len(header)) + 1]
    return {header[s:e].strip(): row[s:e].strip() for s, e in zip(starts, bounds, strict=True)}
