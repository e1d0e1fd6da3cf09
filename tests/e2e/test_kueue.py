"""FineTuneJobs behind a real Kueue (hack/cluster.sh with KUBETUNE_KUEUE=1; skipped without it).

Each test gets its own ClusterQueue with 8 GPUs of quota and a LocalQueue `team-a` in its
namespace, made from manifests/kueue/queues.yaml; the FineTuneJobs come from
manifests/examples/finetunejob-queued.yaml. kwok's nodes hold 2 x 8 GPUs, so only Kueue's quota
keeps a Job waiting:
- two 8-GPU jobs: one runs, the other waits with Kueue's reason in its status (and `kubectl get
  ftj`); when the first finishes the second is admitted and runs;
- a 2-node x 8-GPU job does not fit the quota as a whole: not one pod is created;
- a higher-priority job preempts a running lower one (Kueue evicts its Workload): the lower one
  records a disruption (no retry spent), queues again, and once the higher one finishes is
  re-admitted and resumes from its checkpoint. There the real trainer runs on this machine with
  the pod's command (as in test_finetunejob_trainer.py): SIGTERM when its pod goes writes a
  checkpoint and exits Preempted; the next attempt's command resumes from that step.
Pods are otherwise driven like a kubelet would (`finish_pod`), as in the other e2e tests.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_helpers import (
    REPO,
    OperatorProcess,
    claims_of,
    create_pvcs,
    delete_pvs,
    event_reasons,
    finish_pod,
    load_example,
    operator,  # noqa: F401  (module fixture)
    printed_row,
    status_of,
    trainer_pods,
    wait_phase,
    wait_pod_running,
)

pytestmark = pytest.mark.e2e
Wait = Callable[..., Any]
QUEUES = REPO / "manifests" / "kueue" / "queues.yaml"
MAX_STEPS = 400


@pytest.fixture
def queues(kubectl: Any, namespace: str) -> Iterator[str]:
    """The shipped queue objects, with a ClusterQueue of this test's own; its name."""
    if kubectl("get", "crd", "workloads.kueue.x-k8s.io", check=False).returncode != 0:
        pytest.skip("no Kueue in this cluster: run with KUBETUNE_KUEUE=1 (hack/cluster.sh)")
    cluster_queue = f"cq-{namespace}"[:63]
    docs = []
    for doc in yaml.safe_load_all(QUEUES.read_text()):
        doc = copy.deepcopy(doc)
        if doc["kind"] == "ClusterQueue":
            doc["metadata"]["name"] = cluster_queue
            selector = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            doc["spec"]["namespaceSelector"] = selector
        if doc["kind"] == "LocalQueue":
            doc["metadata"]["namespace"] = namespace
            doc["spec"]["clusterQueue"] = cluster_queue
        docs.append(doc)
    kubectl.apply(*docs)
    yield cluster_queue
    kubectl("delete", "clusterqueue", cluster_queue, "--wait=false", check=False)


def queued_job(name: str, priority: str = "kubetune-batch", nodes: int = 1) -> dict[str, Any]:
    manifest = load_example("queued")
    manifest["metadata"]["name"] = name
    manifest["spec"]["scheduling"]["priorityClassName"] = priority
    manifest["spec"]["resources"]["nodes"] = nodes
    return manifest


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def wait_queued(kubectl: Any, ns: str, name: str, wait_until: Wait) -> dict[str, Any]:
    """Wait until the status carries Kueue's own reason (not only ours: no Workload yet)."""

    def queued() -> dict[str, Any] | None:
        status = status_of(kubectl, ns, name)
        cond = condition(status, "Queued")
        ok = cond.get("status") == "True" and cond.get("reason") != "WaitingForWorkload"
        return status if ok else None

    return dict(wait_until(queued, timeout=90, what=f"{name} queued with Kueue's reason"))


def workload_of(kubectl: Any, ns: str, job: str) -> dict[str, Any]:
    for wl in kubectl.json("get", "workloads.kueue.x-k8s.io", "-n", ns)["items"]:
        if any(r.get("name") == job for r in wl["metadata"].get("ownerReferences", [])):
            return dict(wl)
    return {}


def start(kubectl: Any, ns: str, *manifests: dict[str, Any]) -> None:
    create_pvcs(kubectl, ns, set().union(*(claims_of(m) for m in manifests)))
    for manifest in manifests:
        kubectl.apply(manifest, namespace=ns)


def finish(kubectl: Any, ns: str, name: str, attempt: int, wait_until: Wait) -> None:
    for pod in trainer_pods(kubectl, ns, name, attempt):
        finish_pod(kubectl, ns, pod["metadata"]["name"], 0)
    wait_phase(kubectl, ns, name, "Succeeded", wait_until)


def test_the_second_8_gpu_job_waits_with_kueues_reason_then_runs(
    kubectl: Any,
    namespace: str,
    queues: str,
    operator: OperatorProcess,  # noqa: F811
    wait_until: Wait,
) -> None:
    ns, first, second = namespace, queued_job("first"), queued_job("second")
    try:
        start(kubectl, ns, first)
        pod = wait_pod_running(kubectl, ns, "first", 0, wait_until, timeout=90)[0]
        assert pod["spec"]["priorityClassName"] == "kubetune-batch"
        assert pod["metadata"]["labels"]["team"] == "nlp"
        assert pod["metadata"]["annotations"]["example.com/cost-center"] == "4711"
        job = kubectl.json("get", "job", "first-a0", "-n", ns)
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        wait_phase(kubectl, ns, "first", "Running", wait_until)

        start(kubectl, ns, second)
        status = wait_queued(kubectl, ns, "second", wait_until)
        assert status["phase"] == "Pending"
        cond = condition(status, "Queued")
        kueue = condition(workload_of(kubectl, ns, "second-a0").get("status", {}), "QuotaReserved")
        assert cond["reason"] == kueue["reason"] and cond["message"] == kueue["message"]
        assert (
            "insufficient unused quota" in cond["message"] and "nvidia.com/gpu" in cond["message"]
        )
        assert cond["lastTransitionTime"] in status["message"]  # since when it waits
        assert kubectl.json("get", "job", "second-a0", "-n", ns)["spec"]["suspend"] is True
        assert not trainer_pods(kubectl, ns, "second")
        row = printed_row(kubectl, ns, "second", wide=True)
        assert (row["PHASE"], row["QUEUED"], row["QUEUE"]) == ("Pending", cond["reason"], "team-a")
        assert "insufficient unused quota" in row["MESSAGE"]
        assert "Queued" in event_reasons(kubectl, ns, "second")

        finish(kubectl, ns, "first", 0, wait_until)
        assert "Admitted" in event_reasons(kubectl, ns, "first")
        wait_pod_running(kubectl, ns, "second", 0, wait_until, timeout=90)
        running = wait_phase(kubectl, ns, "second", "Running", wait_until)
        assert condition(running, "Queued")["status"] == "False"
        assert condition(running, "Queued")["reason"] == "Admitted"
        assert printed_row(kubectl, ns, "second")["QUEUED"] == "Admitted"
        wait_until(
            lambda: "Admitted" in event_reasons(kubectl, ns, "second"), what="Admitted event"
        )
        finish(kubectl, ns, "second", 0, wait_until)
    finally:
        delete_pvs(kubectl, ns)


def test_a_2_node_job_that_does_not_fit_is_not_started_at_all(
    kubectl: Any,
    namespace: str,
    queues: str,
    operator: OperatorProcess,  # noqa: F811
    wait_until: Wait,
) -> None:
    ns = namespace
    try:
        start(kubectl, ns, queued_job("gang", nodes=2))
        status = wait_queued(kubectl, ns, "gang", wait_until)
        message = condition(status, "Queued")["message"]
        assert "nvidia.com/gpu" in message and "16" in message, message  # the pod set as a whole
        workload = workload_of(kubectl, ns, "gang-a0")
        assert [p["count"] for p in workload["spec"]["podSets"]] == [2]  # one workload, 2 pods
        time.sleep(5)  # the scheduler could place both pods (2 nodes x 8 GPUs): Kueue must not
        assert not trainer_pods(kubectl, ns, "gang")
        assert kubectl.json("get", "job", "gang-a0", "-n", ns)["spec"]["suspend"] is True
        assert status_of(kubectl, ns, "gang")["phase"] == "Pending"
    finally:
        delete_pvs(kubectl, ns)


def trainer_job(name: str) -> dict[str, Any]:
    """The tiny random-weight Qwen3, 1 GPU, checkpoints every 10 steps, behind the queue.

    400 steps: the test stops the trainer (SIGSTOP) once its first checkpoint is there, and on a
    fast machine the tiny model trains about 40 steps a second; with 30 steps (as before) the
    run once ended before the test could stop it (CI, 2026-12-07)."""
    manifest = queued_job(name)
    manifest["spec"].update(
        {
            "model": {
                "name": "tiny-qwen3",
                "source": {"pvc": {"claimName": "models", "path": "tiny-qwen3"}},
            },
            "dataset": {"train": {"pvc": {"claimName": "data", "path": "train.jsonl"}}},
            "training": {
                "epochs": 20,
                "microBatchSize": 4,
                "learningRate": 1e-3,
                "precision": "fp32",
                "maxSteps": MAX_STEPS,
                "saveEverySteps": 10,
            },
            "resources": {"gpusPerNode": 1},
            "output": {"pvc": {"claimName": "output", "path": "run"}},
        }
    )
    return manifest


class HostTrainer:
    """A trainer pod's command run on this machine, as its kubelet would run the container:
    the Job's args and env, the attempt's ConfigMap, local folders for the PVCs."""

    def __init__(self, kubectl: Any, ns: str, job: str, pvc: Path, work: Path) -> None:
        container = kubectl.json("get", "job", job, "-n", ns)["spec"]["template"]["spec"][
            "containers"
        ][0]
        config = kubectl.json("get", "configmap", job, "-n", ns)["data"]["config.yaml"]
        etc = work / job
        etc.mkdir(parents=True)
        (etc / "config.yaml").write_text(config.replace("/mnt/pvc/", f"{pvc}/"))
        bin_dir = Path(sys.executable).parent
        command = [
            shutil.which(container["command"][0], path=str(bin_dir)) or "torchrun",
            *(a.replace("/etc/kubetune/", f"{etc}/") for a in container["args"]),
        ]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        env.pop("KUBETUNE_FINETUNEJOB", None)  # progress reports are the trainer e2e's subject
        self.log = work / f"{job}.log"
        self.termination_log = work / f"{job}.termination-log"
        self.proc = subprocess.Popen(
            command,
            env={
                **os.environ,
                **env,
                "HF_HOME": str(work / "hf"),
                "HF_HUB_OFFLINE": "1",
                "KUBETUNE_TERMINATION_LOG": str(self.termination_log),
                "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            },
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            cwd=work,
            start_new_session=True,  # one process group: torchrun and its worker
        )

    def signal(self, sig: signal.Signals) -> None:
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def test_a_higher_priority_job_preempts_a_lower_one_which_resumes_from_its_checkpoint(
    kubectl: Any,
    namespace: str,
    queues: str,
    operator: OperatorProcess,  # noqa: F811
    tiny_model_dir: Path,
    tmp_path: Path,
    wait_until: Wait,
) -> None:
    ns = namespace
    pvc = tmp_path / "pvc"
    (pvc / "models").mkdir(parents=True)
    (pvc / "models" / "tiny-qwen3").symlink_to(tiny_model_dir)
    (pvc / "data").mkdir()
    shutil.copy(REPO / "examples" / "data" / "train.jsonl", pvc / "data" / "train.jsonl")
    checkpoints = pvc / "output" / "run" / "checkpoints"
    try:
        start(kubectl, ns, trainer_job("low"))
        wait_pod_running(kubectl, ns, "low", 0, wait_until, timeout=90)
        wait_phase(kubectl, ns, "low", "Running", wait_until)
        first = HostTrainer(kubectl, ns, "low-a0", pvc, tmp_path)
        wait_until(
            lambda: (checkpoints.is_dir() and any(checkpoints.iterdir())) or first.proc.poll(),
            timeout=300,
            what="the first checkpoint of low-a0",
        )
        assert first.proc.poll() is None, first.output()
        first.signal(signal.SIGSTOP)  # hold it mid-run until its pod goes, so it cannot finish

        urgent = queued_job("urgent", priority="kubetune-urgent")  # all 8 GPUs of the quota
        start(kubectl, ns, urgent)
        retrying = wait_phase(kubectl, ns, "low", "Retrying", wait_until, timeout=90)
        ended, nxt = retrying["attempts"]
        assert ended["result"] == "Preempted" and "Kueue evicted" in ended["message"]
        assert "Preempted" in ended["message"]  # Kueue's own reason
        assert "disruption 1 of 10" in nxt["reason"]  # a disruption: no retry spent
        wait_until(
            lambda: not trainer_pods(kubectl, ns, "low", 0),
            what="the evicted Job and its pod gone (else Kueue would admit the Job again)",
        )
        first.signal(signal.SIGCONT)
        first.proc.send_signal(signal.SIGTERM)  # the kubelet's, to torchrun (the container's)
        first.wait()
        said = json.loads(first.termination_log.read_text())  # what the operator would read
        assert said["reason"] == "Preempted", first.output()  # checkpoint written, then exit
        stopped_at = max(int(p.name.removeprefix("step-")) for p in checkpoints.iterdir())
        assert 0 < stopped_at < MAX_STEPS

        wait_pod_running(kubectl, ns, "urgent", 0, wait_until, timeout=90)
        status = wait_queued(kubectl, ns, "low", wait_until)
        assert status["phase"] == "Retrying"
        assert not trainer_pods(kubectl, ns, "low", 1)
        assert "Preempted" in event_reasons(kubectl, ns, "low")

        finish(kubectl, ns, "urgent", 0, wait_until)
        pod = wait_pod_running(kubectl, ns, "low", 1, wait_until, timeout=90)[0]
        wait_until(
            lambda: "Readmitted" in event_reasons(kubectl, ns, "low"), what="Readmitted event"
        )
        second = HostTrainer(kubectl, ns, "low-a1", pvc, tmp_path)
        assert second.wait() == 0, second.output()
        summary = json.loads((pvc / "output" / "run" / "summary.json").read_text())
        assert _find(summary, "resumed_from_step") == stopped_at, summary
        finish_pod(kubectl, ns, pod["metadata"]["name"], 0)
        done = wait_phase(kubectl, ns, "low", "Succeeded", wait_until)
        assert [a["result"] for a in done["attempts"]] == ["Preempted", "Succeeded"]
    finally:
        delete_pvs(kubectl, ns)


def _find(tree: Any, key: str) -> Any:
    """The first value of `key` anywhere in a nested JSON object."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = _find(value, key)
            if found is not None:
                return found
    return None
