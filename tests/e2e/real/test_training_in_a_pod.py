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
    kubectl: Any, release: Release, volumes: Volumes, wait_until: Callable[..., Any]
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
