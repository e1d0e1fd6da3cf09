"""Operator scale benchmark: N FineTuneJobs on kwok GPU nodes, latency to Job and to scheduled pod.

    eval "$(hack/cluster.sh env)"; hack/cluster.sh up
    .venv/bin/python bench/operator_scale.py --counts 1,100,500

For each N: adds kwok GPU nodes if the cluster lacks GPUs, starts `kubetune operator` (as the
e2e tests do), creates N FineTuneJobs in a fresh namespace and watches Jobs and pods. Reports
p50/p99 of apply -> Job created and apply -> pod scheduled, the time until all N are created
and scheduled, and the operator's peak RSS (VmHWM). The baseline is the control plane alone:
N plain batch/v1 Jobs with the same pod shape, apply -> pod scheduled; the ratio is what the
operator adds. Targets: p50 < 1 s at N=1; all 500 Jobs within 60 s; RSS < 200 MB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
from operator_helpers import OperatorProcess, install_crd  # noqa: E402

BENCH_NODE_PREFIX = "kwok-gpu-bench-"
APPLY_WORKERS = 4
EXTRA_ARGS = os.environ.get("BENCH_OPERATOR_ARGS", "").split()
LABEL = "kubetune.io/finetunejob"


@dataclass
class Run:
    """Times (monotonic seconds) per object name, recorded by the watchers."""

    applied: dict[str, float] = field(default_factory=dict)
    created: dict[str, float] = field(default_factory=dict)
    scheduled: dict[str, float] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    apply_seconds: float = 0.0


def kubectl(
    *args: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The kubectl on PATH (`eval "$(hack/cluster.sh env)"` puts the pinned one first)."""
    return subprocess.run(
        ["kubectl", *args], check=check, capture_output=True, text=True, input=input
    )


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return (
        ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
        if ordered
        else float("nan")
    )


def watch_jobs(ns: str, run: Run, key: Callable[[Any], str | None]) -> None:
    w = watch.Watch()
    for event in w.stream(client.BatchV1Api().list_namespaced_job, ns, timeout_seconds=900):
        name = key(event["object"])
        if name and name not in run.created:
            run.created[name] = time.monotonic()
        if run.done.is_set():
            w.stop()


def watch_pods(ns: str, run: Run, key: Callable[[Any], str | None]) -> None:
    w = watch.Watch()
    for event in w.stream(client.CoreV1Api().list_namespaced_pod, ns, timeout_seconds=900):
        pod = event["object"]
        name = key(pod)
        if name and pod.spec.node_name and name not in run.scheduled:
            run.scheduled[name] = time.monotonic()
        if run.done.is_set():
            w.stop()


def ftj_key(obj: Any) -> str | None:
    return (obj.metadata.labels or {}).get(LABEL)


def job_key(obj: Any) -> str | None:
    labels = obj.metadata.labels or {}
    return labels.get("job-name") or (obj.metadata.name if obj.kind == "Job" else None)


def finetunejob(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "name": "Qwen/Qwen3-8B",
                "source": {"pvc": {"claimName": "models", "path": "Qwen3-8B"}},
            },
            "dataset": {"train": {"pvc": {"claimName": "data", "path": "faq/train.jsonl"}}},
            "training": {"microBatchSize": 4},
            "resources": {"gpusPerNode": 1},
            "output": {"pvc": {"claimName": "output", "path": name}},
        },
    }


def plain_job(name: str) -> dict[str, Any]:
    container = {
        "name": "trainer",
        "image": "kubetune-trainer:bench",
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
        },
    }


def volumes(ns: str) -> None:
    core = client.CoreV1Api()
    for claim in ("models", "data", "output"):
        pv = f"{ns}-{claim}"
        core.create_persistent_volume(
            {
                "metadata": {"name": pv, "labels": {"kubetune.io/bench": ns}},
                "spec": {
                    "capacity": {"storage": "10Gi"},
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "hostPath": {"path": f"/tmp/kubetune-bench/{pv}"},
                    "claimRef": {"namespace": ns, "name": claim},
                },
            }
        )
        core.create_namespaced_persistent_volume_claim(
            ns,
            {
                "metadata": {"name": claim},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "volumeName": pv,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )


def fresh_namespace(ns: str) -> None:
    core = client.CoreV1Api()
    core.create_namespace({"metadata": {"name": ns, "labels": {"kubetune.io/bench": "true"}}})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # pods are refused until the default ServiceAccount exists
        if core.list_namespaced_service_account(ns).items:
            return
        time.sleep(0.2)


def cleanup(ns: str) -> None:
    core = client.CoreV1Api()
    core.delete_namespace(ns)
    core.delete_collection_persistent_volume(label_selector=f"kubetune.io/bench={ns}")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            core.read_namespace(ns)
        except client.ApiException as err:
            if err.status == 404:
                return
        time.sleep(1)


def measure(
    ns: str, n: int, create: Callable[[str], None], key: Callable[[Any], str | None], timeout: float
) -> Run:
    run = Run()
    threads = [
        threading.Thread(target=f, args=(ns, run, key), daemon=True)
        for f in (watch_jobs, watch_pods)
    ]
    for t in threads:
        t.start()
    time.sleep(1)  # watches established

    def apply(i: int) -> None:
        name = f"ftj-{i:04d}"
        run.applied[name] = time.monotonic()
        create(name)

    with ThreadPoolExecutor(APPLY_WORKERS) as pool:  # like a few `kubectl apply`s at once
        list(pool.map(apply, range(n)))
    run.apply_seconds = time.monotonic() - min(run.applied.values())
    deadline = time.monotonic() + timeout
    while len(run.scheduled) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    run.done.set()
    return run


def summary(run: Run) -> dict[str, float]:
    to_job = [run.created[k] - run.applied[k] for k in run.applied if k in run.created]
    to_pod = [run.scheduled[k] - run.applied[k] for k in run.applied if k in run.scheduled]
    start = min(run.applied.values())
    return {
        "job_p50": percentile(to_job, 0.5),
        "job_p99": percentile(to_job, 0.99),
        "pod_p50": percentile(to_pod, 0.5),
        "pod_p99": percentile(to_pod, 0.99),
        "all_jobs": max(run.created.values()) - start
        if len(to_job) == len(run.applied)
        else float("inf"),
        "all_pods": max(run.scheduled.values()) - start
        if len(to_pod) == len(run.applied)
        else float("inf"),
        "apply": run.apply_seconds,
        "jobs": len(to_job),
        "pods": len(to_pod),
    }


def ensure_gpus(needed: int, per_node: int) -> list[str]:
    """Add kwok GPU nodes until the cluster has `needed` GPUs; returns the nodes added."""
    core = client.CoreV1Api()
    have = sum(
        int((n.status.allocatable or {}).get("nvidia.com/gpu", 0)) for n in core.list_node().items
    )
    added = []
    i = 0
    while have < needed:
        name = f"{BENCH_NODE_PREFIX}{i}"
        i += 1
        try:
            core.read_node(name)
            continue
        except client.ApiException:
            pass
        resources = {
            "cpu": "96",
            "memory": "1536Gi",
            "pods": "110",
            "nvidia.com/gpu": str(per_node),
        }
        core.create_node(
            {
                "metadata": {
                    "name": name,
                    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {"type": "kwok", "kubernetes.io/hostname": name, "nvidia.com/gpu.present": "true",
                               "kubetune.io/fake-node": "true", "kubetune.io/bench": "true"},
                },
                "status": {"capacity": resources, "allocatable": resources},
            }
        )  # fmt: skip
        added.append(name)
        have += per_node
    return added


def run_operator(n: int, env: dict[str, str], timeout: float, log: Path) -> dict[str, float]:
    ns = f"bench-ftj-{n}-{int(time.time())}"
    fresh_namespace(ns)
    volumes(ns)
    proc = OperatorProcess(env, log, EXTRA_ARGS)
    proc.start()
    api = client.CustomObjectsApi()
    try:

        def create(name: str) -> None:
            api.create_namespaced_custom_object(
                "kubetune.io", "v1alpha1", ns, "finetunejobs", finetunejob(name)
            )

        run = measure(ns, n, create, ftj_key, timeout)
        result = summary(run)
        result["rss_mb"] = _peak_rss(proc) / 2**20
        result["cpu_s"] = _cpu_seconds(proc)
        print(
            f"N={n}: operator CPU {result['cpu_s']:.1f} s; {reconcile_stats(proc.metrics())}",
            flush=True,
        )
    finally:
        proc.stop()
        cleanup(ns)
    return result


def _peak_rss(proc: OperatorProcess) -> int:
    assert proc.proc is not None
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_seconds(proc: OperatorProcess) -> float:
    assert proc.proc is not None
    fields = Path(f"/proc/{proc.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reconcile_stats(metrics: str) -> str:
    """'trigger: count x mean ms' from the operator's reconcile histogram."""
    counts: dict[str, float] = {}
    sums: dict[str, float] = {}
    for line in metrics.splitlines():
        for suffix, into in (("_count", counts), ("_sum", sums)):
            prefix = f"kubetune_operator_reconcile_duration_seconds{suffix}{{"
            if line.startswith(prefix):
                trigger = line.split('trigger="')[1].split('"')[0]
                into[trigger] = float(line.rsplit(" ", 1)[1])
    parts = [
        f"{t} {int(c)} x {1000 * sums[t] / max(c, 1):.0f} ms" for t, c in sorted(counts.items())
    ]
    return "reconciles: " + ", ".join(parts)


def run_baseline(n: int, timeout: float) -> dict[str, float]:
    ns = f"bench-job-{n}-{int(time.time())}"
    fresh_namespace(ns)
    batch = client.BatchV1Api()
    try:
        run = measure(
            ns, n, lambda name: batch.create_namespaced_job(ns, plain_job(name)), job_key, timeout
        )
        return summary(run)
    finally:
        cleanup(ns)


def fmt(seconds: float) -> str:
    return "   n/a" if seconds != seconds or seconds == float("inf") else f"{seconds:6.2f}"


def table(rows: list[tuple[int, dict[str, float], dict[str, float] | None]]) -> str:
    """One line per N; the baseline is N plain Jobs (no operator), ratio = sched p50 / baseline's."""
    head = (
        f"{'N':>5} | {'apply':>6} | {'->Job p50':>9} {'p99':>6} | {'->sched p50':>11} {'p99':>6} | "
        f"{'all Jobs':>8} {'all sched':>9} | {'RSS MB':>6} | {'base p50':>8} {'base all':>8} {'ratio':>5}"
    )
    lines = [head, "-" * len(head)]
    for n, r, base in rows:
        ratio = r["pod_p50"] / base["pod_p50"] if base and base["pod_p50"] > 0 else float("nan")
        lines.append(
            f"{n:>5} | {fmt(r['apply'])} | {fmt(r['job_p50']):>9} {fmt(r['job_p99'])} | "
            f"{fmt(r['pod_p50']):>11} {fmt(r['pod_p99'])} | {fmt(r['all_jobs']):>8} {fmt(r['all_pods']):>9} | "
            f"{r['rss_mb']:6.1f} | {fmt(base['pod_p50']) if base else '   n/a':>8} "
            f"{fmt(base['all_pods']) if base else '   n/a':>8} {ratio:5.2f}"
        )
    return "\n".join(lines)


def targets(rows: list[tuple[int, dict[str, float], dict[str, float] | None]]) -> list[str]:
    out = []
    for n, r, _ in rows:
        if n == 1:
            out.append(
                f"N=1 apply->Job p50 {r['job_p50']:.2f} s < 1 s: {'ok' if r['job_p50'] < 1 else 'MISSED'}"
            )
        if n >= 500:
            out.append(
                f"N={n} all Jobs {r['all_jobs']:.1f} s <= 60 s: {'ok' if r['all_jobs'] <= 60 else 'MISSED'}"
            )
        out.append(
            f"N={n} operator RSS {r['rss_mb']:.0f} MB < 200 MB: {'ok' if r['rss_mb'] < 200 else 'MISSED'}"
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--counts", default="1,100,500", help="comma-separated N values")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs of each added kwok node")
    p.add_argument(
        "--timeout", type=float, default=600, help="seconds to wait for N scheduled pods"
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the plain-Job baseline")
    p.add_argument("--keep-nodes", action="store_true", help="leave the added kwok nodes")
    args = p.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    config.load_kube_config()
    env = dict(os.environ)
    install_crd(kubectl)
    added = ensure_gpus(max(counts), args.gpus_per_node)
    log = Path("/tmp/kubetune-bench-operator.log")
    rows = []
    try:
        for n in counts:
            result = run_operator(n, env, args.timeout, log)
            base = None if args.no_baseline else run_baseline(n, args.timeout)
            rows.append((n, result, base))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    finally:
        if added and not args.keep_nodes:
            client.CoreV1Api().delete_collection_node(label_selector="kubetune.io/bench=true")
    print()
    print(table(rows))
    print()
    print("\n".join(targets(rows)))
    print(f"(operator log: {log}; {len(added)} kwok GPU nodes added for the run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
