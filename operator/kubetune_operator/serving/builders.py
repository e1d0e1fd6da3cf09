"""The children of a ModelDeployment: server Deployments and Services, the router. Pure.

Each model gets a Deployment running `kubetune serve` (readiness `/readyz`, liveness
`/healthz`, a startup probe long enough to load weights, non-root, rolling update with
maxUnavailable 0 so a new adapter never takes capacity away, and a preStop sleep of
`DRAIN_SECONDS` so a pod being replaced leaves the Service's endpoints before it gets SIGTERM
and stops accepting connections: no request is refused during a roll) and a ClusterIP Service
`<mdep>-<model>`. With more than one model, a router Deployment and Service `<mdep>-router`
runs `kubetune route --backend <model>=http://<service>:<port> ...` and is the endpoint.
The adapter path and its revision sit in the pod template's annotations, so a new merged adapter
rolls the Deployment. Named adapters (`adapters:`) instead live in a ConfigMap
`<mdep>-<model>-adapters` that the servers watch (`--adapter-config`): changing them rolls
nothing (only an adapter on a claim not mounted yet adds a volume, and so a rollout).
`runtime: vllm` models are built by `vllm.py`. Called by `plan`; builds the same objects for the same input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubetune_api.deployment import ModelDeploymentSpec, ServedModel
from kubetune_api.storage import is_s3
from kubetune_operator.names import GPU_RESOURCE
from kubetune_operator.serving import names
from kubetune_operator.serving.adapters import Resolved
from kubetune_operator.settings import Settings
from kubetune_operator.storage import cache_volume, hf_home, keeps_cache, storage_env

Json = dict[str, Any]
API_KEY_DIR = "/etc/kubetune/api-key"
# kube-proxy and the router's DNS cache take a moment to drop a terminating pod; meanwhile it
# keeps serving. Well inside the default 30 s grace period, which then covers in-flight work.
DRAIN_SECONDS = 5
API_KEY_FILE = f"{API_KEY_DIR}/token"
ADAPTERS_DIR = "/etc/kubetune/adapters"
ADAPTERS_KEY = "adapters.json"
ADAPTERS_FILE = f"{ADAPTERS_DIR}/{ADAPTERS_KEY}"
SERVER_CONTAINER = "server"
ROUTER_CONTAINER = "router"


@dataclass(frozen=True)
class MdepOwner:
    """Identity of one ModelDeployment (its uid makes owner references exact)."""

    namespace: str
    name: str
    uid: str

    @classmethod
    def of(cls, body: Json) -> MdepOwner:
        meta = body["metadata"]
        return cls(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])

    def meta(self, name: str, model: str) -> Json:
        return {
            "name": name,
            "namespace": self.namespace,
            "labels": names.labels(self.name, model),
            "annotations": {names.ANNOTATION_MDEP: self.name},
            "ownerReferences": [
                {
                    "apiVersion": names.API_VERSION,
                    "kind": names.KIND,
                    "name": self.name,
                    "uid": self.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }


def server_args(model: ServedModel, spec: ModelDeploymentSpec, files: Resolved) -> list[str]:
    """`kubetune serve` arguments for one model (named adapters come from the watched file)."""
    server = spec.server
    args = ["serve", "--model", files.model, "--served-model-name", model.name]
    if files.adapter:
        args += ["--adapter", files.adapter]
    if model.adapters is not None:
        args += ["--adapter-config", ADAPTERS_FILE]
    args += [
        "--quantization", model.quantization,
        "--port", str(server.port),
        "--max-batch-size", str(server.max_batch_size),
        "--max-new-tokens", str(server.max_new_tokens),
        "--max-queue", str(server.max_queue),
        "--max-body-bytes", str(server.max_body_bytes),
        "--max-prompt-chars", str(server.max_prompt_chars),
    ]  # fmt: skip
    if server.api_key_secret_ref is not None:
        args += ["--api-key-file", API_KEY_FILE]
    return args


def router_args(mdep: str, spec: ModelDeploymentSpec) -> list[str]:
    """`kubetune route` arguments: one backend per model's Service, and the policy."""
    port = spec.server.port
    args = ["route"]
    for m in spec.models:
        args += ["--backend", f"{m.name}=http://{names.child_name(mdep, m.name)}:{port}"]
    r = spec.routing
    args += ["--strategy", r.strategy, "--threshold", str(r.complexity.threshold)]
    args += ["--large", r.complexity.large, "--small", r.complexity.small]
    if r.default is not None:
        args += ["--default", r.default]
    for name, weight in sorted((r.weights or {}).items()):
        args += ["--weight", f"{name}={weight}"]
    for m in spec.models:
        args += [arg for a in m.adapters or [] for arg in ("--adapter", f"{a.name}={m.name}")]
    args += ["--port", str(port), "--max-body-bytes", str(spec.server.max_body_bytes)]
    if spec.server.api_key_secret_ref is not None:
        args += ["--api-key-file", API_KEY_FILE]
    return args


def _resources(model: ServedModel | None) -> Json:
    extra = model.resources if model is not None else None
    requests = dict(extra.requests or {}) if extra else {}
    limits = dict(extra.limits or {}) if extra else {}
    if model is not None and model.gpus > 0:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = model.gpus
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _probe(path: str, period: int, failures: int) -> Json:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _container(name: str, image: str, args: list[str], spec: ModelDeploymentSpec) -> Json:
    mounts: list[Json] = [{"name": "tmp", "mountPath": "/tmp"}]
    if spec.server.api_key_secret_ref is not None:
        mounts.append({"name": "api-key", "mountPath": API_KEY_DIR, "readOnly": True})
    return {
        "name": name,
        "image": image,
        "args": args,
        "env": [
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "HF_HOME", "value": hf_home(spec.storage)},
        ],
        "ports": [{"name": "http", "containerPort": spec.server.port, "protocol": "TCP"}],
        "readinessProbe": _probe("/readyz", 5, 3),
        "livenessProbe": _probe("/healthz", 10, 3),
        "startupProbe": _probe("/healthz", 10, 90),  # up to 15 minutes to load weights
        "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}},
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
    }


def _pod_security(settings: Settings) -> Json:
    uid = settings.run_as_user
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _volumes(spec: ModelDeploymentSpec) -> list[Json]:
    volumes: list[Json] = [{"name": "tmp", "emptyDir": {}}]
    ref = spec.server.api_key_secret_ref
    if ref is not None:
        items = [{"key": ref.key, "path": "token"}]
        volumes.append({"name": "api-key", "secret": {"secretName": ref.name, "items": items}})
    return volumes


def _deployment(owner: MdepOwner, model: str, replicas: int, pod: Json, notes: Json) -> Json:
    name = names.child_name(owner.name, model)
    template_meta = {
        "labels": names.labels(owner.name, model),
        "annotations": {names.ANNOTATION_MDEP: owner.name, **notes},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owner.meta(name, model),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": names.selector(owner.name, model)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {"metadata": template_meta, "spec": pod},
        },
    }


def _tolerations(model: ServedModel, settings: Settings) -> list[Json]:
    own = [t.to_wire() for t in model.tolerations or []]
    gpu = list(settings.gpu_tolerations) if model.gpus > 0 else []
    return own + [t for t in gpu if t not in own]


def build_server_deployment(
    owner: MdepOwner,
    spec: ModelDeploymentSpec,
    model: ServedModel,
    files: Resolved,
    settings: Settings,
) -> Json:
    """apps/v1 Deployment `<mdep>-<model>` running `kubetune serve`."""
    image = model.image or settings.runtime_image
    container = _container(SERVER_CONTAINER, image, server_args(model, spec, files), spec)
    container["resources"] = _resources(model)
    container["volumeMounts"] += files.mounts()
    volumes = _volumes(spec) + files.volumes()
    if model.adapters is not None:
        container["volumeMounts"].append(
            {"name": "adapters", "mountPath": ADAPTERS_DIR, "readOnly": True}
        )
        config_map = {"name": names.adapters_config_name(owner.name, model.name)}
        volumes.append({"name": "adapters", "configMap": config_map})
    if is_s3(files.model) or is_s3(files.adapter):  # downloads into a cache volume first
        container["env"] += storage_env(spec.storage)
    if is_s3(files.model) or is_s3(files.adapter) or keeps_cache(spec.storage):
        volume, mount = cache_volume(spec.storage)
        volumes.append(volume)
        container["volumeMounts"].append(mount)
    pod: Json = {
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(settings),
        "containers": [container],
        "volumes": volumes,
    }
    if model.node_selector:
        pod["nodeSelector"] = dict(model.node_selector)
    tolerations = _tolerations(model, settings)
    if tolerations:
        pod["tolerations"] = tolerations
    notes = {}
    if files.adapter_ref:
        notes = {
            names.ANNOTATION_ADAPTER: files.adapter_ref,
            names.ANNOTATION_ADAPTER_HASH: files.revision,
        }
    return _deployment(owner, model.name, model.replicas, pod, notes)


def build_router_deployment(
    owner: MdepOwner, spec: ModelDeploymentSpec, settings: Settings
) -> Json:
    """apps/v1 Deployment `<mdep>-router` running `kubetune route` (CPU only)."""
    image = spec.models[0].image or settings.runtime_image
    container = _container(ROUTER_CONTAINER, image, router_args(owner.name, spec), spec)
    container["resources"] = {"requests": {"cpu": "100m", "memory": "256Mi"}}
    pod: Json = {
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(settings),
        "containers": [container],
        "volumes": _volumes(spec),
    }
    return _deployment(owner, names.ROUTER, 1, pod, {})


def build_adapters_config_map(
    owner: MdepOwner,
    model: str,
    folders: dict[str, str],
    canaries: dict[str, tuple[str, float]] | None = None,
) -> Json:
    """ConfigMap `<mdep>-<model>-adapters`: the named adapters every server of `model` follows.

    `{name: folder}`, or `{name: {path, canary: {path, percent}}}` for an adapter with a canary
    on trial. The pod template names the ConfigMap, never its content, so changing an adapter
    changes the mounted file (the server reloads it) and rolls nothing.
    """
    entries: dict[str, Any] = dict(folders)
    for name, (folder, percent) in (canaries or {}).items():
        entries[name] = {"path": folders[name], "canary": {"path": folder, "percent": percent}}
    body = json.dumps(entries, indent=1, sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owner.meta(names.adapters_config_name(owner.name, model), model),
        "data": {ADAPTERS_KEY: body + "\n"},
    }


def build_service(owner: MdepOwner, model: str, port: int) -> Json:
    """ClusterIP Service `<mdep>-<model>` (or `<mdep>-router`) on the server port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.meta(names.child_name(owner.name, model), model),
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector(owner.name, model),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def endpoint_service(owner_name: str, spec: ModelDeploymentSpec) -> str:
    """The Service clients call: the router's, or the only model's."""
    if len(spec.models) > 1:
        return names.router_name(owner_name)
    return names.child_name(owner_name, spec.models[0].name)


def endpoint(namespace: str, owner_name: str, spec: ModelDeploymentSpec) -> str:
    svc = endpoint_service(owner_name, spec)
    return f"http://{svc}.{namespace}.svc:{spec.server.port}/v1"
