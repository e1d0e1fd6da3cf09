"""The real trainer, run as a local process with the trainer pod's command, args and environment,
reports into the real API server: `kubectl get ftj` shows PROGRESS and LOSS moving, and the
per-task eval metrics of its two-task mixture land in `status.metrics.tasks`.

The pod itself sits on a kwok node (no containers run there). The test reads the Job's
container spec and the attempt's ConfigMap, substitutes local folders for the mounted volumes
(`/mnt/pvc/<claim>` -> a temporary folder per claim; the config file path), and runs the
command with the pod's environment and a kubeconfig holding the trainer ServiceAccount's token,
so the Role's `resourceNames` restriction is exercised too. Then it finishes the pod like a
kubelet and checks the FineTuneJob succeeds. Uses the tiny random-weight Qwen3 (small vocab).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_helpers import (
    REPO,
    OperatorProcess,
    create_pvcs,
    delete_pvs,
    finish_pod,
    operator,  # noqa: F401  (module fixture)
    printed_row,
    status_of,
    trainer_pods,
    wait_phase,
    wait_pod_running,
)

pytestmark = pytest.mark.e2e
Wait = Callable[..., Any]
NAME = "tiny-faq"
LANGUAGES = ("zh", "en")
CJK = re.compile("[\u4e00-\u9fff]")


def manifest() -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": NAME},
        "spec": {
            "model": {
                "name": "tiny-qwen3",
                "source": {"pvc": {"claimName": "models", "path": "tiny-qwen3"}},
            },
            "dataset": {  # two tasks, so status.metrics.tasks is exercised too
                "mixture": [
                    {
                        "name": lang,
                        "train": {"pvc": {"claimName": "data", "path": f"faq/{lang}-train.jsonl"}},
                        "eval": {"pvc": {"claimName": "data", "path": f"faq/{lang}-eval.jsonl"}},
                    }
                    for lang in LANGUAGES
                ]
            },
            "method": {"type": "lora", "rank": 8},
            "training": {
                "epochs": 1,
                "microBatchSize": 4,
                "learningRate": 1e-3,
                "precision": "fp32",
                "maxSteps": 64,
                "evalEverySteps": 32,
                "saveEverySteps": 32,
            },
            "resources": {"gpusPerNode": 1},
            "output": {"pvc": {"claimName": "output", "path": "faq"}},
        },
    }


def local_volumes(root: Path, tiny_model_dir: Path) -> Path:
    """`root/pvc/<claim>` folders standing in for the PVCs."""
    pvc = root / "pvc"
    (pvc / "models").mkdir(parents=True)
    (pvc / "models" / "tiny-qwen3").symlink_to(tiny_model_dir)
    (pvc / "data" / "faq").mkdir(parents=True)
    for split in ("train", "eval"):
        lines = (REPO / "examples" / "data" / f"{split}.jsonl").read_text().splitlines()
        for lang in LANGUAGES:
            kept = [line for line in lines if bool(CJK.search(line)) == (lang == "zh")]
            (pvc / "data" / "faq" / f"{lang}-{split}.jsonl").write_text("\n".join(kept) + "\n")
    (pvc / "output").mkdir()
    return pvc


def service_account_kubeconfig(kubectl: Any, ns: str, admin: Path, out: Path) -> Path:
    """A kubeconfig that authenticates as the trainer's ServiceAccount (a bound token)."""
    token = kubectl("create", "token", f"{NAME}-trainer", "-n", ns, "--duration=1h").stdout.strip()
    cluster = yaml.safe_load(admin.read_text())["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "trainer", "user": {"token": token}}],
        "contexts": [
            {
                "name": "trainer",
                "context": {"cluster": cluster["name"], "user": "trainer", "namespace": ns},
            }
        ],
        "current-context": "trainer",
    }
    out.write_text(yaml.safe_dump(config))
    return out


def pod_command(kubectl: Any, ns: str, pvc: Path, etc: Path) -> tuple[list[str], dict[str, str]]:
    """The trainer container's command line and env, with local paths for the mounts."""
    job = kubectl.json("get", "job", f"{NAME}-a0", "-n", ns)
    container = job["spec"]["template"]["spec"]["containers"][0]
    config = kubectl.json("get", "configmap", f"{NAME}-a0", "-n", ns)["data"]["config.yaml"]
    etc.mkdir(parents=True)
    (etc / "config.yaml").write_text(config.replace("/mnt/pvc/", f"{pvc}/"))
    args = [a.replace("/etc/kubetune/", f"{etc}/") for a in container["args"]]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return [
        shutil.which(container["command"][0], path=str(Path(sys.executable).parent)) or "torchrun",
        *args,
    ], env


def columns(kubectl: Any, ns: str) -> tuple[str, str]:
    row = printed_row(kubectl, ns, NAME)
    return row["PROGRESS"], row["LOSS"]


def test_trainer_reports_progress_and_loss_into_the_api_server(
    kubectl: Any,
    kubeconfig: Path,
    namespace: str,
    operator: OperatorProcess,  # noqa: F811
    tiny_model_dir: Path,
    tmp_path: Path,
    wait_until: Wait,
) -> None:
    ns = namespace
    create_pvcs(kubectl, ns, {"models", "data", "output"})
    try:
        kubectl.apply(manifest(), namespace=ns)
        pod = wait_pod_running(kubectl, ns, NAME, 0, wait_until)[0]
        wait_phase(kubectl, ns, NAME, "Running", wait_until)
        pvc = local_volumes(tmp_path, tiny_model_dir)
        command, pod_env = pod_command(kubectl, ns, pvc, tmp_path / "etc")
        assert command[1:3] == ["--standalone", "--nproc_per_node=1"]
        assert pod_env["KUBETUNE_FINETUNEJOB"] == f"{ns}/{NAME}"
        env = {
            **os.environ,
            **pod_env,
            "HF_HOME": str(tmp_path / "hf"),
            "KUBECONFIG": str(
                service_account_kubeconfig(kubectl, ns, kubeconfig, tmp_path / "sa.kubeconfig")
            ),
            "KUBETUNE_TERMINATION_LOG": str(tmp_path / "termination-log"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        log = (tmp_path / "trainer.log").open("w")
        trainer = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
        )
        seen: list[tuple[str, str]] = []
        deadline = time.monotonic() + 600
        while trainer.poll() is None and time.monotonic() < deadline:
            seen.append(columns(kubectl, ns))
            time.sleep(0.2)
        if trainer.poll() is None:
            trainer.kill()
        output = (tmp_path / "trainer.log").read_text()
        assert trainer.wait() == 0, output[-3000:]

        progress = [p for p, _ in seen if p]
        losses = [loss for _, loss in seen if loss]
        moving = sorted({float(p) for p in progress if 0 < float(p) < 100})
        assert len(moving) >= 2, f"PROGRESS did not move while training: {seen}"
        assert len(set(losses)) >= 2, f"LOSS did not move while training: {seen}"

        status = status_of(kubectl, ns, NAME)
        assert status["progress"]["percent"] == 100.0 and status["progress"]["step"] == 64
        assert status["metrics"]["trainLoss"] > 0 and status["metrics"]["evalLoss"] > 0
        tasks = status["metrics"]["tasks"]
        assert sorted(tasks) == ["en", "zh"], tasks
        assert all(t["evalLoss"] > 0 and 0 <= t["accuracy"] <= 1 for t in tasks.values())
        assert (pvc / "output" / "faq" / "adapter").is_dir()
        assert list((pvc / "output" / "faq" / "checkpoints").iterdir())
        assert "could not patch" not in output, output[-3000:]

        other = {"metadata": {"name": "someone-else"}}
        other_patch = json.dumps({"status": {"phase": "Failed"}})
        denied = subprocess.run(
            [kubectl.executable, "--kubeconfig", env["KUBECONFIG"], "patch", "ftj", other["metadata"]["name"],
             "-n", ns, "--subresource=status", "--type=merge", "-p", other_patch],
            capture_output=True, text=True,
        )  # fmt: skip
        assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()

        finish_pod(kubectl, ns, pod["metadata"]["name"], 0)
        done = wait_phase(kubectl, ns, NAME, "Succeeded", wait_until)
        assert done["output"]["adapterPath"] == "pvc://output/faq/adapter"
        assert done["output"]["checkpointStep"] == 64
        assert done["metrics"] == status["metrics"]  # the operator never touches the trainer's keys
        assert trainer_pods(kubectl, ns, NAME)
    finally:
        delete_pvs(kubectl, ns)
