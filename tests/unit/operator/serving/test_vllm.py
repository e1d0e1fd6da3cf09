"""`runtime: vllm`: the rendered vLLM Deployment (args, env, probes, GPUs, security). No vLLM runs."""

from __future__ import annotations

from typing import Any

from kubetune_operator.serving.builders import MdepOwner
from kubetune_operator.serving.plan import build_children, parse_spec
from kubetune_operator.serving.vllm import VLLM_VERSION
from kubetune_operator.settings import Settings

from .test_builders import example

OWNER = MdepOwner("team-a", "chat-gpu", "uid-2")
SETTINGS = Settings(trainer_image="kubetune-runtime:test")
Json = dict[str, Any]
JOB = {
    "status": {
        "phase": "Succeeded",
        "output": {"adapterPath": "pvc://kubetune-output/credit-card-faq/adapter"},
        "completionTime": "t1",
    }
}


def built(raw: Json | None = None) -> dict[tuple[str, str], Json]:
    spec = parse_spec((raw or example("vllm"))["spec"])
    out = build_children(OWNER, spec, {"credit-card-faq": JOB}, SETTINGS)
    return {(o["kind"], o["metadata"]["name"]): o for o in out.apply}


def test_the_vllm_deployment_runs_the_openai_server_with_lora_and_the_picked_quantization() -> None:
    objs = built()
    pod = objs[("Deployment", "chat-gpu-large")]["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert c["image"] == f"vllm/vllm-openai:v{VLLM_VERSION}"
    assert c["command"] == ["vllm", "serve"]
    assert c["args"] == [
        "/mnt/pvc/kubetune-models/Qwen/Qwen3-8B",
        "--served-model-name", "large",
        "--host", "0.0.0.0", "--port", "8000",
        "--tensor-parallel-size", "1",
        "--gpu-memory-utilization", "0.9",
        "--max-num-seqs", "8",
        "--max-model-len", "16384",
        "--quantization", "fp8",
        "--enable-lora", "--max-loras", "4", "--max-lora-rank", "64",
        "--lora-modules", "faq=/mnt/pvc/kubetune-output/credit-card-faq/adapter",
    ]  # fmt: skip
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    claims = sorted(
        v["persistentVolumeClaim"]["claimName"]
        for v in volumes.values()
        if "persistentVolumeClaim" in v
    )
    assert claims == ["kubetune-models", "kubetune-output"]
    assert pod["metadata"]["annotations"]["kubetune.io/runtime"] == f"vllm-{VLLM_VERSION}"
    assert ("ConfigMap", "chat-gpu-large-adapters") not in objs  # vLLM takes adapters as flags
    small = objs[("Deployment", "chat-gpu-small")]["spec"]["template"]["spec"]["containers"][0]
    assert small["args"][0] == "serve"  # the other model stays on the INT8 server


def test_the_api_key_reaches_vllm_by_secret_reference() -> None:
    raw = example("vllm")
    raw["spec"]["server"] = {"apiKeySecretRef": {"name": "llm-key", "key": "token"}}
    c = built(raw)[("Deployment", "chat-gpu-large")]["spec"]["template"]["spec"]["containers"][0]
    key = next(e for e in c["env"] if e["name"] == "VLLM_API_KEY")
    assert key == {
        "name": "VLLM_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "llm-key", "key": "token"}},
    }
    assert all("llm-key" not in a for a in c["args"])


def test_vllm_objects_are_deterministic_and_none_quantization_has_no_flag() -> None:
    assert built() == built()
    raw = example("vllm")
    raw["spec"]["models"][0]["vllm"] = {"quantization": "none"}
    raw["spec"]["models"][0].pop("adapters")
    args = built(raw)[("Deployment", "chat-gpu-large")]["spec"]["template"]["spec"]["containers"][
        0
    ]["args"]
    assert "--quantization" not in args and "--enable-lora" not in args
