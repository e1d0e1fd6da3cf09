"""Operator chaos: FineTuneJobs through injected failures while the operator is killed at random.

    eval "$(hack/cluster.sh env)"; hack/cluster.sh up
    .venv/bin/python bench/chaos.py --jobs 50 --kills 20

Each FineTuneJob gets a script of attempt endings, for example [OutOfMemory, Preempted,
Succeeded] or [NaNLoss, InvalidData]; a test kubelet (this process) drives every trainer pod that
kwok marks Running to its attempt's ending (exit code, termination line, a DisruptionTarget
condition for a preemption), as tests/e2e do by hand. Meanwhile the operator (`kubetune
operator`, as the e2e tests run it) is SIGKILLed `--kills` times at random moments, and every
third restart sets a crash hook (`KUBETUNE_CRASH_AT`: before-job-apply, after-job-apply,
after-status-patch; see kubetune_operator.crash) so it also dies at those exact points. Checked
per job at the end: its Jobs are exactly `<name>-a0..aK` for the endings scripted, no Job or
FineTuneJob uid ever changed, at most one pod per attempt, `status.attempts` is 0..K with the
scripted results, and the final phase is the one the kubelet drove. Prints jobs, kills, crash
hooks hit, duplicates and lost jobs; exits 1 when any check failed. tests/e2e/test_chaos.py
runs it small (10 jobs, 5 kills).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "operator"))
from operator_helpers import OperatorProcess  # noqa: E402

from kubetune_operator.crash import CRASH_EXIT, POINTS  # noqa: E402
from operator_scale import cleanup, fresh_namespace, volumes  # noqa: E402

LABEL = "kubetune.io/finetunejob"
ENDINGS = {  # scripted ending -> (exit code, reason in the termination line and in attempts)
    "oom": (4, "OutOfMemory"),
    "nan": (5, "NaNLoss"),
    "preempt": (6, "Preempted"),
    "fatal": (3, "InvalidData"),
    "ok": (0, "Succeeded"),
}
HOOKS = POINTS
HOOK_GRACE = 20.0  # seconds a hooked start may run before the random kills resume


@dataclass
class Seen:
    """What the test kubelet saw: pods per attempt, uids per Job and FineTuneJob."""

    pods: dict[tuple[str, int], set[str]] = field(default_factory=lambda: defaultdict(set))
    job_uids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    ftj_uids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    finished: set[str] = field(default_factory=set)


def script(rng: random.Random) -> list[str]:
    """Up to two failures (retries and disruptions), then success or a fatal data error."""
    failures = [rng.choice(["oom", "nan", "preempt"]) for _ in range(rng.randint(0, 2))]
    if failures.count("oom") + failures.count("nan") > 2:
        failures = failures[:2]
    return [*failures, "fatal" if rng.random() < 0.15 else "ok"]


def manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "Qwen/Qwen3-0.6B"},
            "dataset": {"train": {"pvc": {"claimName": "data", "path": "train.jsonl"}}},
            "training": {"microBatchSize": 8},
            "resources": {"gpusPerNode": 1},
            "output": {"pvc": {"claimName": "output", "path": name}},
        },
    }


def finish(core: client.CoreV1Api, ns: str, pod: Any, ending: str) -> None:
    code, reason = ENDINGS[ending]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = json.dumps({"reason": reason, "message": f"chaos: {ending}", "exitCode": code})
    terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                  "message": line, "startedAt": now, "finishedAt": now}  # fmt: skip
    conditions = [{"type": "Ready", "status": "False", "reason": "PodCompleted"}]
    if ending == "preempt":
        conditions.append({"type": "DisruptionTarget", "status": "True",
                           "reason": "PreemptionByScheduler", "lastTransitionTime": now})  # fmt: skip
    status = {
        "phase": "Succeeded" if code == 0 else "Failed",
        "conditions": conditions,
        "containerStatuses": [{"name": "trainer", "image": "kubetune-trainer:e2e", "imageID": "",
                               "ready": False, "restartCount": 0,
                               "state": {"terminated": terminated}}],
    }  # fmt: skip
    core.patch_namespaced_pod_status(pod.metadata.name, ns, {"status": status})


def kubelet_pass(core: client.CoreV1Api, batch: client.BatchV1Api, ns: str,
                 plans: dict[str, list[str]], seen: Seen) -> None:  # fmt: skip
    """One look at every pod and Job: record them, end the Running pods as scripted."""
    for job in batch.list_namespaced_job(ns, label_selector=LABEL).items:
        seen.job_uids[job.metadata.name].add(job.metadata.uid)
    for pod in core.list_namespaced_pod(ns, label_selector=LABEL).items:
        owner = (pod.metadata.annotations or {}).get(LABEL, "")
        attempt = int((pod.metadata.labels or {}).get("kubetune.io/attempt", "-1"))
        seen.pods[(owner, attempt)].add(pod.metadata.uid)
        if pod.status.phase != "Running" or pod.metadata.uid in seen.finished:
            continue
        plan = plans.get(owner, [])
        if 0 <= attempt < len(plan) and not pod.metadata.deletion_timestamp:
            finish(core, ns, pod, plan[attempt])
            seen.finished.add(pod.metadata.uid)


class Chaos:
    """The operator under test, restarted after every kill; every third start has a crash hook.

    A hooked start is spared the random SIGKILL for `HOOK_GRACE` seconds so that it can reach
    its point (jobs are still being created and retried then); any exit other than a hook's
    CRASH_EXIT is counted as a problem."""

    def __init__(self, env: dict[str, str], log: Path, kills: int, rng: random.Random) -> None:
        self.env, self.log, self.kills, self.rng = env, log, kills, rng
        self.proc: OperatorProcess | None = None
        self.killed = self.starts = 0
        self.armed: dict[str, int] = defaultdict(int)
        self.hit: dict[str, int] = defaultdict(int)
        self.hook: str | None = None
        self.started = 0.0
        self.bad_exits: list[int] = []
        self.stop = threading.Event()

    @property
    def hooks(self) -> int:
        return sum(self.hit.values())

    def start(self) -> None:
        env = dict(self.env)
        self.starts += 1
        self.hook = None
        if self.starts % 3 == 0 and self.killed < self.kills:
            self.hook = HOOKS[(self.starts // 3) % len(HOOKS)]
            env["KUBETUNE_CRASH_AT"] = self.hook
            self.armed[self.hook] += 1
        self.proc = OperatorProcess(env, self.log)
        self.started = time.monotonic()
        try:
            self.proc.start()
        except RuntimeError:  # ended before /healthz answered: a hook, or a real crash
            self.ended()

    def ended(self) -> None:
        """The process exited on its own: count it by its exit code, then start another."""
        assert self.proc is not None and self.proc.proc is not None
        code = self.proc.proc.wait()
        if code == CRASH_EXIT and self.hook:
            self.hit[self.hook] += 1
        else:
            self.bad_exits.append(code)
        self.start()

    def run(self) -> None:
        """Kill at random moments; restart at once; a process a hook ended is restarted too."""
        next_kill = time.monotonic() + self.rng.uniform(0.5, 3.0)
        while not self.stop.is_set():
            assert self.proc is not None and self.proc.proc is not None
            spared = self.hook is not None and time.monotonic() - self.started < HOOK_GRACE
            if self.proc.proc.poll() is not None:
                self.ended()
            elif self.killed < self.kills and time.monotonic() >= next_kill and not spared:
                self.proc.kill()
                self.killed += 1
                self.start()
                next_kill = time.monotonic() + self.rng.uniform(0.5, 3.0)
            time.sleep(0.1)

    def hook_summary(self) -> str:
        return ", ".join(f"{p} {self.hit[p]}/{self.armed[p]}" for p in HOOKS if self.armed[p])


def check(name: str, plan: list[str], body: Any, seen: Seen) -> list[str]:
    """Every way this job could have gone wrong."""
    problems = []
    status = body.get("status") or {}
    expected_jobs = {f"{name}-a{i}" for i in range(len(plan))}
    jobs = {j for j in seen.job_uids if j.rsplit("-a", 1)[0] == name}
    if jobs != expected_jobs:
        problems.append(f"{name}: Jobs {sorted(jobs)}, expected {sorted(expected_jobs)}")
    problems += [f"{name}: Job {j} re-created" for j in jobs if len(seen.job_uids[j]) > 1]
    if len(seen.ftj_uids[name]) != 1:
        problems.append(f"{name}: FineTuneJob uid changed")
    problems += [f"{name}: {len(u)} pods in attempt {a}" for (n, a), u in seen.pods.items()
                 if n == name and len(u) > 1]  # fmt: skip
    attempts = status.get("attempts") or []
    if [a.get("index") for a in attempts] != list(range(len(plan))):
        problems.append(f"{name}: attempts {[a.get('index') for a in attempts]}")
    results = [a.get("result") for a in attempts]
    if results != [ENDINGS[e][1] for e in plan]:
        problems.append(f"{name}: results {results}, scripted {plan}")
    final = "Succeeded" if plan[-1] == "ok" else "Failed"
    if status.get("phase") != final:
        problems.append(f"{name}: phase {status.get('phase')}, expected {final}")
    return problems


def run(jobs: int, kills: int, seed: int, timeout: float, log: Path) -> int:
    # $KUBECONFIG as it is now: the client reads it once, at import, for its default location
    config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    core, batch, custom = client.CoreV1Api(), client.BatchV1Api(), client.CustomObjectsApi()
    rng = random.Random(seed)
    ns = f"chaos-{int(time.time())}"
    fresh_namespace(ns)
    volumes(ns)
    chaos = Chaos(dict(os.environ), log, kills, rng)
    chaos.start()
    killer = threading.Thread(target=chaos.run, daemon=True)
    killer.start()
    plans = {f"job-{i:03d}": script(rng) for i in range(jobs)}
    seen = Seen()
    started = time.monotonic()
    for name in plans:
        custom.create_namespaced_custom_object("kubetune.io", "v1alpha1", ns, "finetunejobs",
                                               manifest(name))  # fmt: skip
    bodies: dict[str, Any] = {}
    while time.monotonic() - started < timeout:
        kubelet_pass(core, batch, ns, plans, seen)
        listed = custom.list_namespaced_custom_object("kubetune.io", "v1alpha1", ns, "finetunejobs")
        bodies = {i["metadata"]["name"]: i for i in listed["items"]}
        for name, body in bodies.items():
            seen.ftj_uids[name].add(body["metadata"]["uid"])
        done = [b for b in bodies.values() if (b.get("status") or {}).get("phase") in
                ("Succeeded", "Failed")]  # fmt: skip
        if len(done) == jobs and chaos.killed >= kills:
            break
        time.sleep(0.3)
    elapsed = time.monotonic() - started
    chaos.stop.set()
    killer.join()
    kubelet_pass(core, batch, ns, plans, seen)
    problems = [p for name, plan in plans.items()
                for p in check(name, plan, bodies.get(name, {}), seen)]  # fmt: skip
    lost = sum(1 for name in plans if (bodies.get(name, {}).get("status") or {}).get("phase")
               not in ("Succeeded", "Failed"))  # fmt: skip
    duplicates = sum(1 for p in problems if "re-created" in p or "pods in attempt" in p)
    attempts = sum(len(p) for p in plans.values())
    assert chaos.proc is not None
    chaos.proc.stop()
    problems += [f"operator exited with {code}, not a kill or a hook" for code in chaos.bad_exits]
    print(f"jobs {jobs}  attempts {attempts}  operator SIGKILLs {chaos.killed}  crash hooks hit "
          f"{chaos.hooks}  starts {chaos.starts}  duplicates {duplicates}  lost jobs {lost}  "
          f"problems {len(problems)}  time {elapsed:.1f}s")  # fmt: skip
    print(f"crash hooks hit/armed: {chaos.hook_summary() or 'none armed'}")
    for problem in problems[:40]:
        print("  " + problem)
    cleanup(ns)
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=50)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--log", type=Path, default=Path("/tmp/kubetune-chaos-operator.log"))
    args = p.parse_args(argv)
    return run(args.jobs, args.kills, args.seed, args.timeout, args.log)


if __name__ == "__main__":
    sys.exit(main())
