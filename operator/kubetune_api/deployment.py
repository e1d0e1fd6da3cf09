"""The ModelDeployment spec and status: INT8 inference servers per model and a complexity router.

Read by the CRD generator, the operator's ModelDeployment reconciler and `kubetune serve` /
`kubetune route` (which take the same knobs as flags).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

import kubetune_api.formats as formats
from kubetune_api.base import ApiModel
from kubetune_api.finetune import ComputeResources, PvcRef, SecretKeyRef, Toleration
from kubetune_api.status import Condition
from kubetune_api.storage import StorageSpec, check_uri


class AdapterRef(ApiModel):
    """Which adapter to serve: a FineTuneJob's output, or a path/uri; exactly one."""

    fine_tune_job: str | None = Field(
        default=None,
        description="Name of a FineTuneJob in the same namespace: wait until it Succeeded, then serve its adapter.",
    )
    path: str | None = Field(default=None, description="Adapter folder as the server pod sees it.")
    pvc: PvcRef | None = Field(
        default=None, description="Adapter folder on a PersistentVolumeClaim."
    )
    uri: str | None = Field(
        default=None,
        max_length=formats.PATH_MAX,
        description="s3://bucket/prefix/adapter (downloaded into the server's cache; see "
        "spec.storage) or file:///path in the image.",
    )

    @field_validator("uri")
    @classmethod
    def _readable(cls, uri: str | None) -> str | None:
        return check_uri(uri)

    @model_validator(mode="after")
    def _exactly_one(self) -> AdapterRef:
        given = [n for n in ("fine_tune_job", "path", "pvc", "uri") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of fineTuneJob, path, pvc, uri (got {len(given)})")
        return self


class Promotion(ApiModel):
    """When a FineTuneJob's new adapter may replace the one being served."""

    metric: Literal["evalLoss"] = Field(
        default="evalLoss", description="The FineTuneJob status metric compared (lower is better)."
    )
    max_regression: float = Field(
        default=0.0,
        ge=0,
        description="How much worse than the served adapter the new one may be (e.g. 0.02).",
    )
    canary_percent: float | None = Field(
        default=None,
        gt=0,
        lt=100,
        description="Serve a new run that passes the evaluation gate to this share of the "
        "adapter's requests first (a canary, beside the served one); promote it once it has "
        "answered canaryMinRequests with an error rate no higher than the served one's, else "
        "roll it back. Unset: promote at once.",
    )
    canary_min_requests: int = Field(
        default=20,
        ge=1,
        le=1_000_000,
        description="Requests the canary must have answered (summed over the ready servers) "
        "before it is judged.",
    )


class NamedAdapter(AdapterRef):
    """One of several LoRA adapters served unmerged on the same base, picked by request `model`."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="The `model` clients send to get this adapter (listed by GET /v1/models).",
    )
    promotion: Promotion | None = Field(
        default=None,
        description="fineTuneJob only: roll a new run's adapter out only if its evaluation is no "
        "worse than the served one's; otherwise keep serving the old one.",
    )


class VllmSpec(ApiModel):
    """vLLM settings of a `runtime: vllm` model (GPU serving; flags for vLLM 0.11)."""

    quantization: Literal["none", "fp8", "bitsandbytes", "awq", "gptq"] = Field(
        default="none", description="vLLM --quantization (awq/gptq need a checkpoint made so)."
    )
    max_model_len: int | None = Field(
        default=None, ge=16, description="vLLM --max-model-len (default: the model's)."
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="vLLM --gpu-memory-utilization."
    )
    max_loras: int = Field(
        default=4, ge=1, le=64, description="vLLM --max-loras: adapters in one batch."
    )
    max_lora_rank: int = Field(default=64, ge=1, le=512, description="vLLM --max-lora-rank.")
    image: str = Field(default="vllm/vllm-openai:v0.11.0", description="vLLM OpenAI-server image.")


class ServedModel(ApiModel):
    """One model behind the router (e.g. `large` and `small`)."""

    name: str = Field(
        min_length=1,
        max_length=40,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Short DNS-style name used in object names and by the router (e.g. large, small).",
    )
    model: str = Field(
        min_length=1,
        max_length=formats.PATH_MAX,  # bounds the cost of the CRD's URI rule
        description="Base model: hub id (Qwen/Qwen3-8B), a path in the image/volume, or "
        "s3://bucket/prefix (downloaded into the server's cache; see spec.storage).",
    )

    @field_validator("model")
    @classmethod
    def _model_uri(cls, model: str) -> str:
        return check_uri(model) or model if "://" in model else model

    model_pvc: PvcRef | None = Field(
        default=None, description="Volume holding the base model, if not in the image."
    )
    adapter: AdapterRef | None = Field(
        default=None, description="Adapter to merge and serve (optional)."
    )
    adapters: list[NamedAdapter] | None = Field(
        default=None,
        max_length=32,
        description="LoRA adapters served unmerged on this base, each picked by its name in the "
        "request's `model`; adding, removing or re-pointing one updates the running servers.",
    )
    runtime: Literal["kubetune", "vllm"] = Field(
        default="kubetune",
        description="kubetune: the INT8 FastAPI server (CPU or GPU); vllm: vLLM's OpenAI server "
        "(GPUs: continuous batching, paged attention).",
    )
    vllm: VllmSpec | None = Field(default=None, description="vLLM settings (runtime: vllm).")
    quantization: Literal["int8", "none"] = Field(
        default="int8",
        description="int8: bitsandbytes 8-bit on GPUs, PyTorch dynamic int8 on CPUs; none: bf16/fp32.",
    )
    replicas: int = Field(default=1, ge=0, le=100, description="Server pods.")
    resources: ComputeResources | None = Field(
        default=None, description="Container requests/limits (cpu, memory)."
    )
    gpus: int = Field(
        default=1, ge=0, le=16, description="nvidia.com/gpu per server pod (0 for CPU serving)."
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels the pods require."
    )
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=32, description="Pod tolerations."
    )
    image: str | None = Field(
        default=None, description="Runtime image (default: the operator's setting)."
    )

    @model_validator(mode="after")
    def _adapters_fit(self) -> ServedModel:
        if self.adapter is not None and self.adapters:
            raise ValueError("set adapter (one, merged) or adapters (several, by name), not both")
        names = [a.name for a in self.adapters or []]
        if len(set(names)) != len(names) or self.name in names:
            raise ValueError(f"adapters[].name must be unique and differ from name, got {names}")
        for a in self.adapters or []:
            if a.promotion is not None and a.fine_tune_job is None:
                raise ValueError(f"adapters[{a.name}].promotion needs fineTuneJob")
            canary = a.promotion.canary_percent if a.promotion is not None else None
            if canary is not None and self.runtime == "vllm":
                raise ValueError(
                    f"adapters[{a.name}].promotion.canaryPercent needs runtime kubetune "
                    f"(vLLM cannot split one adapter's traffic), got {canary:g}"
                )
        if self.runtime == "vllm" and self.gpus < 1:
            raise ValueError(f"runtime vllm needs gpus >= 1, got {self.gpus}")
        if self.vllm is not None and self.runtime != "vllm":
            raise ValueError("vllm settings are for runtime: vllm")
        return self


class ComplexityRouting(ApiModel):
    """The complexity policy's knob."""

    threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Requests scoring at or above go to the large model, others to small.",
    )
    large: str = Field(
        default="large", description="Name of the model that takes complex requests."
    )
    small: str = Field(default="small", description="Name of the model that takes simple requests.")


class RoutingSpec(ApiModel):
    """How the router picks a model for each request."""

    strategy: Literal["complexity", "weighted", "single"] = Field(
        default="complexity",
        description="complexity: score each request; weighted: random by weights; single: always `default`.",
    )
    complexity: ComplexityRouting = Field(
        default_factory=ComplexityRouting, description="Complexity policy."
    )
    weights: dict[str, float] | None = Field(
        default=None, description="Model name -> weight, for `weighted`."
    )
    default: str | None = Field(
        default=None, description="Model for `single`, and the fallback's first choice."
    )


class ServerSpec(ApiModel):
    """Server limits shared by every model."""

    max_batch_size: int = Field(default=8, ge=1, le=256, description="Requests generated together.")
    max_new_tokens: int = Field(
        default=512, ge=1, le=32768, description="Cap on max_tokens of a request."
    )
    max_queue: int = Field(
        default=64, ge=1, le=10000, description="Waiting requests before 429 Too Many Requests."
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret with a bearer token clients must send; unset: no key needed.",
    )
    port: int = Field(
        default=8000, ge=1024, le=65535, description="Container port of servers and router."
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        le=1024**3,
        description="Request bodies past this are refused with 413 while being read.",
    )
    max_prompt_chars: int = Field(
        default=500_000,
        ge=1,
        le=100_000_000,
        description="Prompts longer than this (characters) are a 400, before tokenizing.",
    )


class ModelDeploymentSpec(ApiModel):
    """What a ModelDeployment asks for."""

    models: list[ServedModel] = Field(min_length=1, max_length=8, description="Models to serve.")
    routing: RoutingSpec = Field(
        default_factory=RoutingSpec, description="Request routing between models."
    )
    server: ServerSpec = Field(default_factory=ServerSpec, description="Server limits and API key.")
    storage: StorageSpec | None = Field(
        default=None, description="How the server pods reach the object store of s3:// URIs."
    )

    @model_validator(mode="after")
    def _names_resolve(self) -> ModelDeploymentSpec:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models[].name must be unique, got {names}")
        r = self.routing
        wanted = {"routing.default": r.default}
        if r.strategy == "complexity" and len(names) > 1:
            wanted |= {
                "routing.complexity.large": r.complexity.large,
                "routing.complexity.small": r.complexity.small,
            }
        for where, name in wanted.items():
            if name is not None and name not in names:
                raise ValueError(f"{where} names model {name!r}, which is not in models[] {names}")
        return self


class ReplicaAdapterState(ApiModel):
    """One named adapter on one server pod, as the pod reports it (GET /adapterz)."""

    pod: str = Field(description="Server pod name.")
    state: Literal["Loading", "Loaded", "Failed", "Unknown"] = Field(
        description="Loaded: serving the configured folder; Loading: loading it, or the pod has "
        "not seen the new adapter list yet; Failed: its load failed (see reason); Unknown: the "
        "pod did not answer."
    )
    reason: str | None = Field(default=None, description="Why Failed, Loading or Unknown.")


class CanaryStatus(ApiModel):
    """A new FineTuneJob run served to part of an adapter's requests before it is promoted."""

    path: str = Field(description="Adapter folder of the canary run.")
    revision: str | None = Field(default=None, description="The run (its completionTime).")
    eval_loss: float | None = Field(default=None, description="evalLoss of the canary run.")
    percent: float = Field(description="Share of the adapter's requests sent to the canary.")
    state: Literal["Running", "Promoted", "RolledBack"] = Field(
        description="Running: taking its share of requests; Promoted: it is the served adapter "
        "now; RolledBack: its error rate was higher than the served adapter's (or it failed to "
        "load), so it serves nothing and this run is not tried again."
    )
    requests: int = Field(default=0, description="Requests the canary answered or failed.")
    errors: int = Field(default=0, description="Canary requests that failed on the server.")
    stable_requests: int = Field(
        default=0, description="Requests the served adapter took meanwhile."
    )
    stable_errors: int = Field(default=0, description="Of those, the ones that failed.")
    reason: str | None = Field(default=None, description="Why it was rolled back.")


class AdapterStatus(ApiModel):
    """One named adapter of a served model: what the operator configured, what the pods serve."""

    name: str = Field(description="Adapter name (the request's `model`).")
    state: Literal["Pending", "Configured", "Loading", "Loaded", "Failed"] = Field(
        description="Pending: waiting for its FineTuneJob; Configured: in the servers' adapter "
        "list, no server reported yet; Loading: not every ready server serves it yet; Loaded: "
        "every ready server serves it; Failed: cannot be served (see reason and replicas)."
    )
    replicas: list[ReplicaAdapterState] | None = Field(
        default=None, max_length=100, description="Per ready server pod."
    )
    canary: CanaryStatus | None = Field(
        default=None, description="A new run on trial (promotion.canaryPercent)."
    )
    path: str | None = Field(default=None, description="Adapter folder being served.")
    eval_loss: float | None = Field(
        default=None, description="evalLoss of the served adapter's FineTuneJob run."
    )
    revision: str | None = Field(
        default=None, description="The served FineTuneJob run (its completionTime)."
    )
    reason: str | None = Field(
        default=None, description="Why it waits, failed, or why a newer run was not promoted."
    )


class ServedModelStatus(ApiModel):
    """Observed state of one served model."""

    name: str = Field(description="Model name.")
    replicas: int = Field(default=0, description="Desired server pods.")
    ready_replicas: int = Field(default=0, description="Server pods passing /readyz.")
    adapter: str | None = Field(default=None, description="Adapter being served (path), if any.")
    adapters: list[AdapterStatus] | None = Field(
        default=None, max_length=32, description="Per named adapter (spec.models[].adapters)."
    )


class ModelDeploymentStatus(ApiModel):
    """Observed state of a ModelDeployment."""

    phase: Literal["Pending", "Progressing", "Available", "Degraded", "Failed"] | None = Field(
        default=None, description="Pending, Progressing, Available, Degraded or Failed."
    )
    ready: str | None = Field(default=None, description="Ready server pods over desired, e.g. 3/3.")
    models: list[ServedModelStatus] | None = Field(
        default=None, max_length=8, description="Per-model state."
    )
    endpoint: str | None = Field(
        default=None, description="In-cluster URL of the OpenAI-compatible endpoint."
    )
    conditions: list[Condition] | None = Field(
        default=None, max_length=32, description="Latest observations."
    )
    observed_generation: int | None = Field(
        default=None, description="The spec generation last reconciled."
    )
    message: str | None = Field(default=None, description="One-line summary of the current state.")
