"""Asks the ready server pods of a ModelDeployment for their adapter state (`GET /adapterz`).

`reconcile.read` calls `probe_servers` with the pods it listed; `plan` turns the answers into
per-replica adapter states and canary verdicts (`replicas`, `canary`). This is the operator's
only network I/O besides the Kubernetes API: one short HTTP GET per ready pod, on its pod IP
and the server port, with no API key (the endpoint carries only names, states, reasons, counts
and folder digests). A pod that is not Ready, has no IP yet, or whose IP lies outside
`Settings.pod_networks` is not contacted; every pod without an answer gets a `problem`, which
the status shows as Unknown. Router pods and vLLM pods are not asked.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import ValidationError

from kubetune_api.adapter_report import AdaptersReport
from kubetune_operator import names as ftj_names
from kubetune_operator.serving import names
from kubetune_operator.serving.replicas import PodReport
from kubetune_operator.settings import Settings

Json = dict[str, Any]
TIMEOUT_S = 2.0  # a server answers /adapterz from memory, off its generation thread
MAX_BYTES = 1024 * 1024
Fetch = Callable[[str], bytes]


def pod_ready(pod: Json) -> bool:
    """Whether the pod is Ready (and not being deleted)."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def http_get(url: str) -> bytes:
    """GET `url`; the body, or OSError (refused, timed out, non-2xx)."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as answer:
        return bytes(answer.read(MAX_BYTES + 1))


def probe_pod(pod: Json, port: int, settings: Settings, fetch: Fetch = http_get) -> PodReport:
    """Ask one ready pod for its report."""
    name = pod["metadata"]["name"]
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return PodReport(name, problem="the pod has no IP yet")
    if not settings.may_contact(ip):
        return PodReport(name, problem=f"pod IP {ip} is outside the operator's pod networks")
    host = f"[{ip}]" if ":" in ip else ip
    try:
        body = fetch(f"http://{host}:{port}/adapterz")
    except OSError as err:  # refused, timed out, non-2xx (urllib's errors are OSErrors)
        return PodReport(name, problem=f"GET /adapterz failed: {err}")
    if len(body) > MAX_BYTES:
        return PodReport(name, problem=f"GET /adapterz answered more than {MAX_BYTES} bytes")
    try:
        return PodReport(name, AdaptersReport.model_validate(json.loads(body)))
    except (ValueError, ValidationError) as err:
        return PodReport(name, problem=f"GET /adapterz answered something else: {err}"[:300])


def _server_of(pod: Json) -> str | None:
    """The model a server pod serves (None for router pods and others)."""
    labels = pod.get("metadata", {}).get("labels") or {}
    if labels.get(ftj_names.LABEL_COMPONENT) != "server":
        return None
    model = labels.get(names.LABEL_MODEL)
    return model if isinstance(model, str) else None


def probe_servers(
    pods: list[Json], models: set[str], port: int, settings: Settings, fetch: Fetch = http_get
) -> dict[str, list[PodReport]]:
    """model -> a report per ready server pod of each model in `models` (by pod name)."""
    wanted = [p for p in pods if _server_of(p) in models and pod_ready(p)]
    out: dict[str, list[PodReport]] = {m: [] for m in sorted(models)}
    if not wanted:
        return out
    with ThreadPoolExecutor(max_workers=min(8, len(wanted))) as pool:
        reports = list(pool.map(lambda p: probe_pod(p, port, settings, fetch), wanted))
    for pod, report in zip(wanted, reports, strict=True):
        out[pod["metadata"]["labels"][names.LABEL_MODEL]].append(report)
    for model in out:
        out[model].sort(key=lambda r: r.pod)
    return out
