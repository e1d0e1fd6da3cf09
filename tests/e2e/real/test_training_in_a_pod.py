"""A FineTuneJob trains in a real pod of the runtime image (CPU torch) on the real node.

The in-cluster operator (chart release) creates the Job; the kubelet runs `torchrun ... kubetune
train` as uid 1000 with the pod's mounts (model and data read-only from local PVs, the output
claim writable), and the trainer reports into the FineTuneJob with its own ServiceAccount.
Covered: PROGRESS and LOSS moving in `kubectl get ftj`, Succeeded with the adapter on the PV,
`kubectl logs` showing the trainer, and a failing pod's termination message in status.attempts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from real_helpers import Release, Trained, Volumes, ftj_manifest


def test_finetunejob_trains_in_a_real_pod(trained: Trained, volumes: Volumes) -> None:
    assert trained.status["phase"] == "Succeeded", json.dumps(trained.status)[:3000]
    progress = sorted({float(r["PROGRESS"]) for r in trained.rows if r.get("PROGRESS")})
    moving = [p for p in progress if 0 < p < 100]
    assert len(moving) >= 2, f"PROGRESS did not move while training: {trained.rows}"
    losses = {r["LOSS"] for r in trained.rows if r.get("LOSS")}
    assert len(losses) >= 2, f"LOSS did not move while training: {trained.rows}"
    assert trained.status["progress"]["percent"] == 100.0
    assert trained.status["metrics"]["evalLoss"] > 0
    assert (trained.adapter / "adapter_config.json").is_file(), list(
        trained.adapter.parent.rglob("*")
    )
    assert trained.adapter.stat().st_uid == 1000  # written by the pod's user
    assert list((volumes.path("output") / trained.name / "checkpoints").iterdir())
    attempts = trained.status["attempts"]
    assert [a.get("result") for a in attempts] == ["Succeeded"], attempts


def test_kubectl_logs_show_the_trainer(trained: Trained) -> None:
    assert "step" in trained.logs.lower(), trained.logs[-2000:]
    assert "Traceback" not in trained.logs, trained.logs[-3000:]


def test_failing_pod_termination_message_reaches_the_attempts(
    kubectl: Any,
    release: Release,
    reconciler: str,
    volumes: Volumes,
    wait_until: Callable[..., Any],
) -> None:
    """Training data that is not chat examples: the trainer exits non-zero and writes its one
    JSON line to /dev/termination-log; the kubelet puts it into the container status, and the
    operator into status.attempts."""
    ns, name = release.namespace, "broken-data"
    kubectl.apply(ftj_manifest(name, train="faq/broken.jsonl"), namespace=ns)

    def ended() -> dict[str, Any] | None:
        status = kubectl.json("get", "ftj", name, "-n", ns).get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_until(ended, timeout=600, what=f"FineTuneJob {name} to fail")
    assert status["phase"] == "Failed", status
    pod = kubectl.json("get", "pods", "-n", ns, "-l", f"kubetune.io/finetunejob={name}")["items"][0]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] != 0, terminated
    line = json.loads(terminated["message"].strip().splitlines()[-1])
    attempt = status["attempts"][0]
    assert attempt["result"] == line["reason"], (attempt, line)
    assert attempt["message"] and line["message"][:40] in attempt["message"], (attempt, line)


def test_deleted_trainer_pod_gets_a_new_attempt_that_resumes(
    kubectl: Any,
    release: Release,
    reconciler: str,
    volumes: Volumes,
    wait_until: Callable[..., Any],
) -> None:
    """`kubectl delete pod` mid-run: the kubelet sends the real SIGTERM and waits the grace
    period; the Job fails, the operator starts attempt 1 and `--resume auto` continues from the
    newest checkpoint on the output PV. (The trainer has no SIGTERM handler of its own yet: the
    checkpoint it resumes from is the last periodic one, not one written on SIGTERM.)"""
    ns, name = release.namespace, "interrupted"
    manifest = ftj_manifest(name, maxSteps=64, saveEverySteps=8, evalEverySteps=32)
    manifest["spec"]["retry"] = {"maxRetries": 1}
    kubectl.apply(manifest, namespace=ns)
    checkpoints = volumes.path("output") / name / "checkpoints"

    def saved() -> list[str] | None:
        found = (
            sorted(p.name for p in checkpoints.glob("*") if p.is_dir())
            if checkpoints.exists()
            else []
        )
        return found or None

    wait_until(saved, timeout=600, what=f"a checkpoint of {name}")
    pod = kubectl.json("get", "pods", "-n", ns, "-l", f"kubetune.io/finetunejob={name}")["items"][0]
    kubectl("delete", "pod", pod["metadata"]["name"], "-n", ns, "--wait=true", timeout=120)
    before = saved() or []
    stale = int(
        (kubectl.json("get", "ftj", name, "-n", ns)["status"].get("progress") or {}).get("step")
        or 0
    )
    steps: list[int] = []  # what attempt 1 reports (status.progress keeps attempt 0's until then)

    def ended() -> dict[str, Any] | None:
        status = kubectl.json("get", "ftj", name, "-n", ns).get("status") or {}
        step = int((status.get("progress") or {}).get("step") or 0)
        if len(status.get("attempts") or []) > 1 and (steps or step != stale):
            steps.append(step)
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_until(ended, timeout=900, what=f"FineTuneJob {name} to finish")
    attempts = status["attempts"]
    assert len(attempts) == 2, attempts
    assert attempts[0]["result"] != "Succeeded", attempts
    assert status["phase"] == "Succeeded", status
    assert status["progress"]["step"] == 64, status["progress"]
    # Resumed, not restarted: attempt 1 never reported a step before the checkpoint it found.
    first = int(before[-1].rsplit("-", 1)[-1]) if before and before[-1][-1].isdigit() else 0
    assert steps and min(steps) >= first, (before, steps)


def test_two_node_finetunejob_rendezvous_through_the_headless_service(
    kubectl: Any,
    release: Release,
    reconciler: str,
    volumes: Volumes,
    wait_until: Callable[..., Any],
) -> None:
    """`nodes: 2`: an Indexed Job of two pods; torchrun on pod 1 finds pod 0 as
    `<job>-0.<service>` (CoreDNS answering for the headless Service), gloo on the CPU, and the
    two train one adapter."""
    ns, name = release.namespace, "two-nodes"
    manifest = ftj_manifest(name, maxSteps=16, evalEverySteps=16, saveEverySteps=16)
    manifest["spec"]["resources"]["nodes"] = 2
    kubectl.apply(manifest, namespace=ns)
    logs = ""

    def ended() -> dict[str, Any] | None:
        nonlocal logs
        status = kubectl.json("get", "ftj", name, "-n", ns).get("status") or {}
        for pod in kubectl.json("get", "pods", "-n", ns, "-l", f"kubetune.io/finetunejob={name}")[
            "items"
        ]:
            out = kubectl(
                "logs", pod["metadata"]["name"], "-n", ns, "--tail=60", check=False
            ).stdout
            logs = out if len(out) > len(logs) else logs
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_until(ended, timeout=900, what=f"FineTuneJob {name} to finish")
    pods = kubectl.json("get", "pods", "-n", ns, "-l", f"kubetune.io/finetunejob={name}")["items"]
    logs = (
        "\n".join(
            kubectl("logs", p["metadata"]["name"], "-n", ns, "--tail=60", check=False).stdout
            for p in pods
        )
        or logs
    )
    assert status["phase"] == "Succeeded", (
        f"{json.dumps(status)[:1500]}\n--- pod logs ---\n{logs[-5000:]}"
    )
    assert len(pods) == 2 and all(p["status"]["phase"] == "Succeeded" for p in pods), logs
    assert (volumes.path("output") / name / "adapter" / "adapter_config.json").is_file()
