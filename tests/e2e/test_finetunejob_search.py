"""A hyperparameter search (spec.search) on the real control plane: trials as child Jobs.

Applies the shipped manifests/examples/finetunejob-search.yaml (6 trials, 2 at a time) and
drives each trial's pod the way a kubelet would, ending it with the trainer's `Succeeded`
termination line (its final eval loss) or a failure. The operator must keep at most 2 trial
Jobs running, record every trial in status.trials with its sampled values (which its ConfigMap
carries), count progress in trials, and finish with the best trial's adapter as the output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml
from operator_helpers import (
    EXAMPLES,
    OperatorProcess,
    children,
    claims_of,
    create_pvcs,
    delete_and_wait,
    delete_pvs,
    event_reasons,
    finish_pod,
    load_example,
    operator,  # noqa: F401  (module fixture)
    printed_row,
    termination,
    wait_phase,
)

pytestmark = pytest.mark.e2e
Wait = Callable[..., Any]
LOSSES = {0: 2.1, 1: 1.4, 2: None, 3: 0.9, 4: 1.7, 5: 1.2}  # None: the trial runs out of memory


def trial_pods(kubectl: Any, ns: str, name: str, trial: int) -> list[dict[str, Any]]:
    selector = f"kubetune.io/finetunejob={name},kubetune.io/trial={trial}"
    return list(kubectl.json("get", "pods", "-n", ns, "-l", selector)["items"])


def active_trial_jobs(kubectl: Any, ns: str, name: str) -> list[str]:
    """Trial Jobs whose pod has not ended (the Job's own Complete condition may lag behind)."""
    selector = f"kubetune.io/finetunejob={name},kubetune.io/trial"
    pods = kubectl.json("get", "pods", "-n", ns, "-l", selector)["items"]
    ended = ("Succeeded", "Failed")
    return sorted(
        p["metadata"]["labels"]["job-name"] for p in pods if p["status"].get("phase") not in ended
    )


def finish_trial(kubectl: Any, ns: str, name: str, trial: int, wait: Wait) -> None:
    def running() -> dict[str, Any] | None:
        pods = [
            p for p in trial_pods(kubectl, ns, name, trial) if p["status"].get("phase") == "Running"
        ]
        return pods[0] if pods else None

    pod = wait(running, timeout=60, what=f"a running pod of trial {trial}")["metadata"]["name"]
    loss = LOSSES[trial]
    if loss is None:
        message = termination("OutOfMemory", 4, "CUDA out of memory. Tried to allocate 4 GiB")
        finish_pod(kubectl, ns, pod, 4, message)
    else:
        finish_pod(
            kubectl, ns, pod, 0, termination("Succeeded", 0, "adapter at ...", evalLoss=loss)
        )


def test_search_runs_trials_as_jobs_and_ends_with_the_best_adapter(
    kubectl: Any,
    namespace: str,
    operator: OperatorProcess,  # noqa: F811
    wait_until: Wait,
) -> None:
    ns, manifest = namespace, load_example("search")
    name, search = manifest["metadata"]["name"], manifest["spec"]["search"]
    assert (search["trials"], search["parallelTrials"]) == (6, 2)
    create_pvcs(kubectl, ns, claims_of(manifest))
    try:
        kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "finetunejob-search.yaml"))
        wait_phase(kubectl, ns, name, "Running", wait_until)
        assert children(kubectl, ns, name) == {
            "ServiceAccount": [f"{name}-trainer"],
            "Role": [f"{name}-trainer"],
            "RoleBinding": [f"{name}-trainer"],
            "ConfigMap": [f"{name}-t0", f"{name}-t1"],
            "Job": [f"{name}-t0", f"{name}-t1"],
        }
        row = printed_row(kubectl, ns, name)
        assert row["PHASE"] == "Running" and row["PROGRESS"] == "0"

        for trial in range(6):
            finish_trial(kubectl, ns, name, trial, wait_until)
            if trial + 2 < 6:  # its place goes to the next trial, never to a third at once
                nxt = f"{name}-t{trial + 2}"
                wait_until(
                    lambda job=nxt: job in active_trial_jobs(kubectl, ns, name),
                    timeout=60,
                    what=f"trial Job {nxt}",
                )
                assert len(active_trial_jobs(kubectl, ns, name)) <= 2

        status = wait_phase(kubectl, ns, name, "Succeeded", wait_until)
        trials = status["trials"]
        assert [t["jobName"] for t in trials] == [f"{name}-t{i}" for i in range(6)]
        assert [t["result"] for t in trials] == ["Succeeded"] * 2 + ["OutOfMemory"] + [
            "Succeeded"
        ] * 3
        assert [t.get("evalLoss") for t in trials] == [LOSSES[i] for i in range(6)]
        assert status["bestTrial"] == 3
        assert (
            status["output"]["adapterPath"]
            == f"pvc://kubetune-output/{name}/trials/trial-0003/adapter"
        )
        assert status["progress"]["step"] == 6 and status["progress"]["percent"] == 100.0
        assert status["metrics"]["evalLoss"] == 0.9

        values = {tuple(sorted(t["params"].items())) for t in trials}
        assert len(values) == 6, "every trial got values of its own"
        for t in trials:
            lr = float(t["params"]["learningRate"])
            assert 1e-5 <= lr <= 1e-3 and t["params"]["rank"] in ("8", "16", "32")
            data = kubectl.json("get", "configmap", t["jobName"], "-n", ns)["data"]["config.yaml"]
            config = yaml.safe_load(data)
            assert config["training"]["learningRate"] == lr
            assert config["method"]["rank"] == int(t["params"]["rank"])
            assert config["output"]["path"].endswith(f"trials/trial-{t['index']:04d}")

        reasons = event_reasons(kubectl, ns, name)
        assert reasons.count("TrialStarted") == 6 and "TrialFailed" in reasons
        assert "Succeeded" in reasons
        row = printed_row(kubectl, ns, name)
        assert row["PHASE"] == "Succeeded" and row["EVAL-LOSS"] == "0.9"
    finally:
        delete_and_wait(kubectl, ns, name, wait_until)
        delete_pvs(kubectl, ns)
