"""`kubetune serve --fine-tune-job NAME`: find the adapter a FineTuneJob wrote.

`loading.py` calls `resolve_fine_tune_job` before loading weights. It reads the FineTuneJob in
the pod's namespace through the Kubernetes API (in-cluster config, else kubeconfig), waits while
it is still running, and returns `status.output.adapterPath`; a Failed job is an error that names
its message. The server never imports the operator: this reads the CR as plain JSON.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from kubetune_api.names import FINETUNEJOB_PLURAL as PLURAL
from kubetune_api.names import GROUP, VERSION

log = logging.getLogger(__name__)

NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

Fetch = Callable[[str, str], dict[str, Any]]


class AdapterNotReadyError(RuntimeError):
    """The FineTuneJob failed, or did not succeed in time."""


def current_namespace() -> str:
    """The pod's namespace (service-account file), else `default`."""
    try:
        return NAMESPACE_FILE.read_text(encoding="utf-8").strip() or "default"
    except OSError:
        return "default"


def kube_fetch(name: str, namespace: str) -> dict[str, Any]:
    """GET the FineTuneJob `name` as a dict."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    body = client.CustomObjectsApi().get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return cast(dict[str, Any], body)


def adapter_path_of(body: dict[str, Any]) -> Path | str | None:
    """The adapter path of a Succeeded FineTuneJob; None while it runs; raises if it failed."""
    status = body.get("status") or {}
    phase = status.get("phase")
    name = body.get("metadata", {}).get("name", "?")
    if phase == "Failed":
        raise AdapterNotReadyError(
            f"FineTuneJob {name} failed: {status.get('message') or 'no message'}"
        )
    if phase != "Succeeded":
        return None
    path = (status.get("output") or {}).get("adapterPath")
    if not path:
        raise AdapterNotReadyError(
            f"FineTuneJob {name} succeeded but has no status.output.adapterPath"
        )
    return path if path.startswith("s3://") else Path(path)  # s3://: `remote` downloads it


def resolve_fine_tune_job(
    name: str,
    namespace: str | None = None,
    *,
    timeout_s: float = 24 * 3600,
    poll_s: float = 10.0,
    fetch: Fetch = kube_fetch,
) -> Path | str:
    """Wait for FineTuneJob `name` to succeed and return its adapter folder (or s3:// URI)."""
    ns = namespace or current_namespace()
    deadline = time.monotonic() + timeout_s
    while True:
        path = adapter_path_of(fetch(name, ns))
        if path is not None:
            return path
        if time.monotonic() >= deadline:
            raise AdapterNotReadyError(
                f"FineTuneJob {ns}/{name} did not succeed in {timeout_s:.0f}s"
            )
        log.info("waiting for FineTuneJob %s/%s to succeed", ns, name)
        time.sleep(poll_s)
