"""Fixtures for the e2e tier: tests against a real Kubernetes control plane.

Which cluster the tier talks to:

* ``KUBETUNE_KUBECONFIG`` set: that cluster (kind, a real one). Nothing is started or
  stopped; kubectl is ``KUBETUNE_KUBECTL`` or the first ``kubectl`` on PATH.
* otherwise: the local control plane of ``hack/cluster.sh`` (real etcd, kube-apiserver,
  kube-controller-manager and kube-scheduler; kwok fakes the nodes and their kubelets). The
  session runs ``hack/cluster.sh up`` (the first run on a machine builds the binaries) and,
  if it started the cluster, ``hack/cluster.sh down`` at the end, unless
  ``KUBETUNE_KEEP_CLUSTER=1``. A cluster that was already up (``make cluster-up``) is used
  and left running. kubectl and helm are the pinned ones from ``hack/cluster.sh env``.

Before any test runs (``pytest_collection_finish``, outside pytest-timeout's per-test limit),
``hack/cluster.sh build`` builds the control plane when e2e or real tests are selected, and
``hack/cluster.sh images`` builds our images when real tests are (unless
``KUBETUNE_REAL_NODES=0``); both are cached, and a build dies with its caller.

Run with ``pytest -m e2e tests/e2e`` (kwok nodes) or ``pytest -m real tests/e2e/real`` (our
images in real pods on the real node, see tests/e2e/real/conftest.py). Fixtures: ``cluster`` (paths and a subprocess
environment), ``kubeconfig``, ``kubectl``, ``namespace`` and ``wait_until``. Only the standard
library, pytest and PyYAML are used here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO_ROOT / "hack" / "cluster.sh"


@dataclass(frozen=True)
class Cluster:
    """The cluster under test: its kubeconfig and the directory of pinned tools, if any."""

    kubeconfig: Path
    bin_dir: Path | None  # holds kubectl and helm for the local cluster; None otherwise
    s3: dict[str, str] = field(default_factory=dict)  # AWS_* of the local cluster's S3 server
    pod_networks: str | None = None  # KUBETUNE_POD_NETWORKS for operators run from the tests

    def s3_env(self) -> dict[str, str]:
        """AWS_ENDPOINT_URL and keys of the cluster's S3 server ({} for an external cluster)."""
        return dict(self.s3)

    def env(self) -> dict[str, str]:
        """os.environ for subprocesses (helm, the operator) that should reach this cluster."""
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        if self.bin_dir is not None:
            env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        if self.pod_networks is not None:
            env["KUBETUNE_POD_NETWORKS"] = self.pod_networks
        return env

    def kubectl_path(self) -> str:
        if self.bin_dir is not None:
            return str(self.bin_dir / "kubectl")
        found = os.environ.get("KUBETUNE_KUBECTL") or shutil.which("kubectl")
        if not found:
            raise RuntimeError("no kubectl: put one on PATH or set KUBETUNE_KUBECTL")
        return found


class KubectlError(RuntimeError):
    """kubectl exited non-zero; the message carries the command and its stderr."""


class Kubectl:
    """Runs kubectl against the cluster under test: ``kubectl("get", "pods", "-n", ns)``."""

    def __init__(self, executable: str, kubeconfig: Path) -> None:
        self.executable = executable
        self.kubeconfig = kubeconfig

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        command = [self.executable, "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise KubectlError(
                f"`kubectl {' '.join(args)}` exited {result.returncode}: {result.stderr.strip()}"
            )
        return result

    def json(self, *args: str) -> Any:
        """``kubectl <args> -o json``, parsed."""
        return json.loads(self(*args, "-o", "json").stdout)

    def apply(self, *manifests: Mapping[str, Any], namespace: str | None = None) -> str:
        """Server-side apply of manifest dicts; returns kubectl's output."""
        args = ["apply", "--server-side", "-f", "-"]
        if namespace is not None:
            args += ["-n", namespace]
        return self(*args, input=yaml.safe_dump_all(manifests)).stdout


def wait_until(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that; fail on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.25)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build what the selected tests need now, not inside the first test's timeout: a cold
    build on a loaded 2-core machine takes longer than pytest-timeout allows one test."""
    if os.environ.get("KUBETUNE_KUBECONFIG") or session.config.option.collectonly:
        return
    marks = {mark.name for item in session.items for mark in item.iter_markers()}
    steps = ["build"] if marks & {"e2e", "real"} else []
    if "real" in marks and os.environ.get("KUBETUNE_REAL_NODES") != "0":
        steps.append("images")
    for step in steps:
        if subprocess.run([str(CLUSTER_SH), step]).returncode != 0:
            pytest.exit(f"hack/cluster.sh {step} failed; see its output", returncode=1)


def _local_cluster() -> Cluster:
    """The local cluster as ``hack/cluster.sh env`` describes it (KUBECONFIG and PATH lines)."""
    out = subprocess.run([str(CLUSTER_SH), "env"], capture_output=True, text=True, check=True)
    kubeconfig = re.search(r'^export KUBECONFIG="(.*)"$', out.stdout, re.MULTILINE)
    bin_dir = re.search(r'^export PATH="(.*):\$PATH"$', out.stdout, re.MULTILINE)
    assert kubeconfig and bin_dir, f"unexpected `hack/cluster.sh env` output: {out.stdout!r}"
    s3 = dict(re.findall(r'^export (AWS_[A-Z_]+)="(.*)"$', out.stdout, re.MULTILINE))
    networks = re.search(r'^export KUBETUNE_POD_NETWORKS="(.*)"$', out.stdout, re.MULTILINE)
    return Cluster(
        kubeconfig=Path(kubeconfig.group(1)),
        bin_dir=Path(bin_dir.group(1)),
        s3=s3,
        pod_networks=networks.group(1) if networks else None,
    )


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The cluster under test; starts (and afterwards stops) the local one when needed."""
    external = os.environ.get("KUBETUNE_KUBECONFIG")
    if external:
        yield Cluster(kubeconfig=Path(external), bin_dir=None)
        return
    already_up = subprocess.run([str(CLUSTER_SH), "status"], capture_output=True).returncode == 0
    stop_after = not already_up and os.environ.get("KUBETUNE_KEEP_CLUSTER") != "1"
    if not already_up:
        started = subprocess.run([str(CLUSTER_SH), "up"])
        if started.returncode != 0:
            if stop_after:  # leave no half-started processes behind
                subprocess.run([str(CLUSTER_SH), "down"])
            pytest.fail(f"hack/cluster.sh up failed (exit {started.returncode}); see its output")
    yield _local_cluster()
    if stop_after:
        subprocess.run([str(CLUSTER_SH), "down"], check=True)


@pytest.fixture(scope="session")
def kubeconfig(cluster: Cluster) -> Path:
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def kubectl(cluster: Cluster) -> Kubectl:
    return Kubectl(cluster.kubectl_path(), cluster.kubeconfig)


@pytest.fixture(name="wait_until", scope="session")
def wait_until_fixture() -> Callable[..., Any]:
    """``wait_until(predicate, timeout=60, what="...")``: poll until truthy."""
    return wait_until


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test (deleted afterwards, without waiting)."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    name = f"e2e-{slug}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, "kubetune.io/e2e=true")
    # Pods are refused until the controller-manager has made the default service account.
    has_account = ("get", "serviceaccount", "default", "-n", name)
    wait_until(
        lambda: kubectl(*has_account, check=False).returncode == 0,
        what=f"service account default in {name}",
    )
    yield name
    kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")
