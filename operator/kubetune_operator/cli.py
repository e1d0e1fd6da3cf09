"""`kubetune operator`: run the FineTuneJob operator (kopf) in this process.

    kubetune operator [--namespace NS]... [--all-namespaces] [--kubeconfig PATH]
                      [--metrics-port 8080] [--health-port 8081] [--trainer-image IMAGE]
                      [--gpu-tolerations JSON] [--standalone | --peering NAME]
                      [--priority oldest|N] [--workers N] [--verbose]

In a pod it uses the in-cluster service account; elsewhere the kubeconfig (`--kubeconfig`,
else KUBECONFIG, else ~/.kube/config). /metrics is Prometheus, /healthz is kopf's liveness
endpoint. Defaults for the trainer image and GPU tolerations come from KUBETUNE_TRAINER_IMAGE
and KUBETUNE_GPU_TOLERATIONS. With `--peering` (the chart's replicaCount > 1) the replicas share
a kopf peering object and only the highest priority reconciles; `--priority oldest` (the
default) derives a distinct priority from the start time, the oldest replica first, so a new
pod of a rolling upgrade waits until the old one has gone (it leaves the peering on SIGTERM) and
a replica SIGKILLed is replaced within `activities.PEERING_LIFETIME` seconds.
Called by the `kubetune` dispatcher (`kubetune_cli.main`).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import logging
import os
import socket
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

from kubetune_api.memory import parse_size
from kubetune_operator.settings import Settings, parse_networks, parse_tolerations


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run the Kubetune FineTuneJob operator.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)"
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else KUBECONFIG)")
    p.add_argument(
        "--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: off)"
    )
    p.add_argument("--health-port", type=int, default=8081, help="liveness /healthz port (0: off)")
    p.add_argument("--trainer-image", help="default trainer image (env KUBETUNE_TRAINER_IMAGE)")
    p.add_argument(
        "--gpu-tolerations",
        help="JSON list of tolerations added to GPU pods (env KUBETUNE_GPU_TOLERATIONS)",
    )
    p.add_argument(
        "--gpu-memory",
        help="memory of one GPU (e.g. 80Gi) for the pre-flight of jobs that do not set "
        "spec.resources.gpuMemory (env KUBETUNE_GPU_MEMORY; unset: no check)",
    )
    p.add_argument(
        "--pod-networks",
        help="comma-separated CIDRs of server pod IPs the operator may ask for their adapter "
        "state (GET /adapterz); others are reported Unknown (env KUBETUNE_POD_NETWORKS; unset: any)",
    )
    peering = p.add_mutually_exclusive_group()
    peering.add_argument(
        "--standalone", action="store_true", help="no kopf peering (one operator replica)"
    )
    peering.add_argument(
        "--peering",
        metavar="NAME",
        help="kopf peering object shared by replicas: only the highest-priority one acts",
    )
    p.add_argument(
        "--priority",
        default=os.environ.get("KUBETUNE_PEERING_PRIORITY", "oldest"),
        help="kopf peering priority: an integer, or 'oldest' (from the start time: the oldest "
        "replica is active; env KUBETUNE_PEERING_PRIORITY)",
    )
    p.add_argument(
        "--workers", type=int, default=64, help="threads for API calls (reconciles in flight)"
    )
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    """Environment defaults, overridden by flags."""
    settings = Settings.from_env()
    if args.trainer_image:
        settings = dataclasses.replace(settings, trainer_image=args.trainer_image)
    if args.gpu_tolerations:
        tolerations = parse_tolerations(args.gpu_tolerations)
        settings = dataclasses.replace(settings, gpu_tolerations=tolerations)
    if args.gpu_memory:
        settings = dataclasses.replace(settings, gpu_memory=args.gpu_memory)
    if args.pod_networks:
        settings = dataclasses.replace(settings, pod_networks=parse_networks(args.pod_networks))
    if settings.gpu_memory:
        parse_size(settings.gpu_memory)  # a bad size is a ValueError here, not in every reconcile
    return settings


PRIORITY_EPOCH_MS = 2**42  # ~ year 2109: `oldest` priorities stay positive until then


def peering_priority(value: str, started: float) -> int:
    """The kopf priority for `--priority`: an integer as given, or from `started` (epoch
    seconds) for `oldest`, so two replicas started a millisecond apart never share one."""
    if value == "oldest":
        return PRIORITY_EPOCH_MS - int(started * 1000)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--priority must be 'oldest' or an integer, got {value!r}") from None


def process_start_time() -> float:
    """When this process started (epoch seconds), from the kernel: not when its imports ended,
    which on a loaded node can reorder two replicas started a second apart. A 10 ms clock tick,
    plus 0-9 ms from the host name so two pods of one tick still differ; now where /proc is not.
    """
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()
    return started + (zlib.crc32(socket.gethostname().encode()) % 10) / 1000


def main(argv: Sequence[str] | None = None, prog: str = "kubetune operator") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        args.priority = peering_priority(args.priority, process_start_time())
        settings = settings_from(args)
    except ValueError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return run(args, settings)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas (as MALLOC_ARENA_MAX=2 would) before threads start.

    Every API thread would otherwise get its own arena; with dozens of threads that roughly
    doubled the operator's resident memory at 500 FineTuneJobs (bench/operator_scale.py).
    """
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Build the parts, hand them to the handlers (registered at import), run kopf."""
    import kopf

    from kubetune_operator import activities  # noqa: F401  # registers kopf's settings, login
    from kubetune_operator.finetune import handlers as finetune_handlers
    from kubetune_operator.finetune.reconcile import FineTuneJobs
    from kubetune_operator.kube import Kube, connect
    from kubetune_operator.metrics import OperatorMetrics
    from kubetune_operator.serving import handlers as serving_handlers
    from kubetune_operator.serving.reconcile import ModelDeployments

    limit_malloc_arenas()
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # kopf's own login reads it too
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("kubetune.operator").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:  # kopf logs every handler call at INFO: one line per watch event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    metrics = OperatorMetrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    kube = Kube(connect(args.kubeconfig))
    finetunejobs = FineTuneJobs(kube, settings, metrics, workers=args.workers)
    finetune_handlers.PARTS.set(finetune_handlers.Parts(finetunejobs.runner, metrics))
    serving_handlers.PARTS.set(ModelDeployments(kube, settings).runner)
    health = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    kopf.run(
        standalone=args.standalone or None,
        peering_name=args.peering,
        priority=args.priority if args.peering else None,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=health,
    )
    return 0
