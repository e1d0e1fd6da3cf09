"""The operator's only door to the API server: server-side apply, reads, status patches, deletes.

Requests go through the `kubernetes` client's transport (kubeconfig or in-cluster credentials,
TLS, connection pool) but carry plain JSON: no generated model classes, so a reconcile costs
microseconds of (de)serialisation, not milliseconds. Children are written with server-side
apply under the fixed field manager `kubetune-operator` (force: the operator owns them).
Called by the runner wiring of each kind (`finetune.reconcile`, `serving.reconcile`) through
`runner.Runner.call`; nothing else in the operator does I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config

from kubetune_operator import names

Json = dict[str, Any]
PLURALS = {
    "ConfigMap": "configmaps",
    "ServiceAccount": "serviceaccounts",
    "Service": "services",
    "Job": "jobs",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Deployment": "deployments",
}
REQUEST_TIMEOUT = 30.0


class KubeError(Exception):
    """A failed API request; `temporary` errors are worth retrying."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def temporary(self) -> bool:
        """Worth retrying: also a 404 from apply (a RoleBinding applied before its Role exists
        is answered NotFound by the RBAC escalation check; the next try finds the Role)."""
        return self.status in (0, 404, 409, 429) or self.status >= 500

    @property
    def rejected(self) -> bool:
        """The API server refused the object itself (400, 422): sending it again cannot help."""
        return self.status in (400, 422)


@dataclass
class Applied:
    """The answers to `Kube.apply_all`, in order; `rejected`: the object refused, and why."""

    answers: list[Json]
    rejected: Json | None = None
    error: KubeError | None = None


def connect(kubeconfig: str | None = None, pool_size: int = 32) -> client.ApiClient:
    """An ApiClient from in-cluster credentials, else the kubeconfig (KUBECONFIG or ~/.kube)."""
    cfg = client.Configuration()
    try:
        if kubeconfig is not None:
            raise config.ConfigException("explicit kubeconfig")
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = pool_size
    return client.ApiClient(cfg)


def _base(api_version: str) -> str:
    return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


def object_path(obj: Json) -> str:
    """The REST path of a namespaced object from its apiVersion, kind and metadata."""
    meta = obj["metadata"]
    plural = PLURALS[obj["kind"]]
    return f"{_base(obj['apiVersion'])}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"


def finetunejob_path(namespace: str, name: str) -> str:
    return f"/apis/{names.API_VERSION}/namespaces/{namespace}/{names.PLURAL}/{name}"


def modeldeployment_path(namespace: str, name: str) -> str:
    return f"/apis/{names.API_VERSION}/namespaces/{namespace}/modeldeployments/{name}"


class Kube:
    """JSON requests against one cluster."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        missing_ok: bool = True,
    ) -> Json | None:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        request = self.api.param_serialize(
            method,
            path,
            query_params=query,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(*request, _request_timeout=REQUEST_TIMEOUT)
            data = response.read()
        except client.ApiException as err:  # transport errors (TLS, connection)
            raise KubeError(err.status or 0, str(err.reason), str(err.body or err)) from None
        except OSError as err:
            raise KubeError(0, type(err).__name__, str(err)) from None
        if response.status == 404 and method != "POST" and missing_ok:
            return None
        if response.status >= 400:
            raise _error(response.status, data)
        return json.loads(data) if data else {}

    def apply(self, obj: Json) -> Json:
        """Server-side apply (field manager kubetune-operator, force)."""
        query = [("fieldManager", names.FIELD_MANAGER), ("force", "true")]
        result = self._call(
            "PATCH",
            object_path(obj),
            query=query,
            body=obj,
            content_type="application/apply-patch+yaml",
            missing_ok=False,  # NotFound from an apply is an error, never "applied"
        )
        return result or {}

    def apply_all(self, objects: list[Json]) -> Applied:
        """Server-side apply each object in order, stopping at the first one the API server
        rejects (400/422); any other error raises."""
        answers = []
        for obj in objects:
            try:
                answers.append(self.apply(obj))
            except KubeError as err:
                if not err.rejected:
                    raise
                return Applied(answers, obj, err)
        return Applied(answers)

    def read_finetunejob(self, namespace: str, name: str) -> Json | None:
        """The FineTuneJob, or None when it is gone."""
        return self._call("GET", finetunejob_path(namespace, name))

    def patch_finetunejob_status(self, namespace: str, name: str, patch: Json) -> Json | None:
        """JSON merge patch of the status subresource; the new body, or None if it is gone."""
        path = finetunejob_path(namespace, name) + "/status"
        return self._call(
            "PATCH", path, body={"status": patch}, content_type="application/merge-patch+json"
        )

    def read_modeldeployment(self, namespace: str, name: str) -> Json | None:
        """The ModelDeployment, or None when it is gone."""
        return self._call("GET", modeldeployment_path(namespace, name))

    def patch_modeldeployment_status(self, namespace: str, name: str, patch: Json) -> Json | None:
        """JSON merge patch of a ModelDeployment's status; the new body, or None if it is gone."""
        path = modeldeployment_path(namespace, name) + "/status"
        return self._call(
            "PATCH", path, body={"status": patch}, content_type="application/merge-patch+json"
        )

    def list_labelled(
        self, api_version: str, plural: str, namespace: str, selector: str
    ) -> list[Json]:
        """Objects of one kind in a namespace matching a label selector."""
        path = f"{_base(api_version)}/namespaces/{namespace}/{plural}"
        found = self._call("GET", path, query=[("labelSelector", selector)])
        return list((found or {}).get("items") or [])

    def delete_object(self, api_version: str, plural: str, namespace: str, name: str) -> None:
        """Delete one namespaced object (dependents in the background); a missing one is fine."""
        path = f"{_base(api_version)}/namespaces/{namespace}/{plural}/{name}"
        self._call("DELETE", path, body={"propagationPolicy": "Background"})

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and (in the background) its pods; a missing Job is fine."""
        path = f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}"
        self._call("DELETE", path, body={"propagationPolicy": "Background"})


def _error(status: int, data: bytes) -> KubeError:
    try:
        body = json.loads(data)
    except ValueError:
        body = {}
    return KubeError(status, str(body.get("reason", "")), str(body.get("message", data[:500])))
