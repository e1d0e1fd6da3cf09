"""`runtime: vllm`: a model served by vLLM's OpenAI server on GPUs. Pure.

`plan.build_children` calls `build_vllm_deployment` instead of the INT8 server's builder for a
model with `runtime: vllm`; the Service and the router in front are the same (the router reads
vLLM's `/health` where the INT8 server has `/readyz`). Every vLLM flag is written here, in
`vllm_args`, for vLLM 0.11 (`vllm/vllm-openai:v0.11.0`, whose entrypoint we override with
`vllm serve`): continuous batching and paged attention are vLLM's defaults; `--enable-lora`
with the named adapters as `--lora-modules name=folder` (up to `maxLoras` in one batch), the
quantization the user picks, `--tensor-parallel-size` = the pod's GPUs. The API key reaches
vLLM as `VLLM_API_KEY` from the Secret (by reference). Probes use vLLM's `/health`. vLLM loads
its adapters at start, so for this runtime a changed adapter list rolls the Deployment (the INT8
server follows its ConfigMap instead). Nothing here runs vLLM: no GPU on the build machine;
the unit tests check the rendered objects and the e2e test schedules them on kwok GPU nodes.
"""

from __future__ import annotations

import hashlib
from typing import Any

from kubetune_api.deployment import ModelDeploymentSpec, ServedModel, VllmSpec
from kubetune_operator.serving import names
from kubetune_operator.serving.adapters import Resolved
from kubetune_operator.settings import Settings

Json = dict[str, Any]
VLLM_VERSION = "0.11.0"
VLLM_CONTAINER = "vllm"
SHM_DIR = "/dev/shm"


def vllm_args(
    model: ServedModel, spec: ModelDeploymentSpec, files: Resolved, adapters: dict[str, str]
) -> list[str]:
    """The arguments of `vllm serve` for one model (vLLM 0.11 flag names)."""
    v = model.vllm or VllmSpec()
    args = [files.model, "--served-model-name", model.name]
    args += ["--host", "0.0.0.0", "--port", str(spec.server.port)]
    args += ["--tensor-parallel-size", str(model.gpus)]
    args += ["--gpu-memory-utilization", str(v.gpu_memory_utilization)]
    args += ["--max-num-seqs", str(spec.server.max_batch_size)]
    if v.max_model_len is not None:
        args += ["--max-model-len", str(v.max_model_len)]
    if v.quantization != "none":
        args += ["--quantization", v.quantization]
    if files.adapter:
        adapters = {f"{model.name}-lora": files.adapter, **adapters}
    if adapters:
        args += ["--enable-lora", "--max-loras", str(v.max_loras)]
        args += ["--max-lora-rank", str(v.max_lora_rank), "--lora-modules"]
        args += [f"{name}={folder}" for name, folder in sorted(adapters.items())]
    return args


def _env(spec: ModelDeploymentSpec) -> list[Json]:
    env: list[Json] = [
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "VLLM_LOGGING_LEVEL", "value": "INFO"},
    ]
    ref = spec.server.api_key_secret_ref
    if ref is not None:
        secret = {"secretKeyRef": {"name": ref.name, "key": ref.key}}
        env.append({"name": "VLLM_API_KEY", "valueFrom": secret})
    return env


def _probe(period: int, failures: int) -> Json:
    return {
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def vllm_container(
    model: ServedModel, spec: ModelDeploymentSpec, files: Resolved, adapters: dict[str, str]
) -> Json:
    """The vLLM container: image, command, args, env, probes, mounts."""
    v = model.vllm or VllmSpec()
    mounts: list[Json] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "shm", "mountPath": SHM_DIR},
        *files.mounts(),
    ]
    return {
        "name": VLLM_CONTAINER,
        "image": model.image or v.image,
        "command": ["vllm", "serve"],
        "args": vllm_args(model, spec, files, adapters),
        "env": _env(spec),
        "ports": [{"name": "http", "containerPort": spec.server.port, "protocol": "TCP"}],
        "readinessProbe": _probe(5, 3),
        "livenessProbe": _probe(10, 3),
        "startupProbe": _probe(10, 180),  # up to 30 minutes: weights, CUDA graphs
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
    }


def build_vllm_deployment(
    owner: Any,
    spec: ModelDeploymentSpec,
    model: ServedModel,
    files: Resolved,
    adapters: dict[str, str],
    settings: Settings,
) -> Json:
    """apps/v1 Deployment `<mdep>-<model>` running vLLM's OpenAI server."""
    from kubetune_operator.serving import builders

    container = vllm_container(model, spec, files, adapters)
    container["resources"] = builders._resources(model)
    shm = {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}
    pod: Json = {
        "automountServiceAccountToken": False,
        "securityContext": builders._pod_security(settings),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}, shm, *files.volumes()],
    }
    if model.node_selector:
        pod["nodeSelector"] = dict(model.node_selector)
    tolerations = builders._tolerations(model, settings)
    if tolerations:
        pod["tolerations"] = tolerations
    notes = {names.ANNOTATION_RUNTIME: f"vllm-{VLLM_VERSION}"}
    if adapters or files.adapter_ref:
        listed = "\0".join(f"{k}={v}" for k, v in sorted(adapters.items()))
        notes[names.ANNOTATION_ADAPTER_HASH] = hashlib.sha256(
            f"{files.revision}\0{listed}".encode()
        ).hexdigest()[:16]
    return builders._deployment(owner, model.name, model.replicas, pod, notes)
