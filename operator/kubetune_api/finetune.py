"""The FineTuneJob spec: model, dataset, PEFT method, training, resources, output, retries.

One schema for three readers: the CRD generator (descriptions, enums, bounds become the
OpenAPI schema), the operator (parses `spec` of each FineTuneJob) and the trainer (the same
classes, minus the Kubernetes-only parts, are its config). Cross-field rules that the API
server cannot express live in `model_validator`s here, so every reader enforces them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

import kubetune_api.formats as formats
from kubetune_api.base import ApiModel
from kubetune_api.extras import AugmentationSpec, SearchSpec
from kubetune_api.scheduling import SchedulingSpec
from kubetune_api.storage import StorageSpec, check_uri

DEFAULT_TARGET_MODULES = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
]


DnsName = Annotated[
    str,
    Field(min_length=1, max_length=formats.NAME_MAX, pattern=formats.DNS_SUBDOMAIN),
]
ConfigKey = Annotated[
    str, Field(min_length=1, max_length=formats.NAME_MAX, pattern=formats.CONFIG_KEY)
]


def _no_parent(path: str) -> str:
    if re.search(formats.PARENT_SEGMENT, path):
        raise ValueError(f"a path inside a volume may not contain '..', got {path!r}")
    return path


def _check_keys(values: Mapping[str, object] | None, what: str) -> None:
    for key in values or {}:
        if not re.fullmatch(formats.QUALIFIED_NAME, key) or len(key) > formats.KEY_MAX:
            raise ValueError(f"{what} {key!r} is not a valid Kubernetes name ([prefix/]name)")


class PvcRef(ApiModel):
    """A file or folder on a PersistentVolumeClaim."""

    claim_name: DnsName = Field(
        description="Name of the PersistentVolumeClaim (a DNS-1123 subdomain)."
    )
    path: str = Field(
        default="",
        max_length=formats.PATH_MAX,
        description="Path inside the volume (file or folder); '..' is refused.",
    )

    @field_validator("path")
    @classmethod
    def _inside(cls, path: str) -> str:
        return _no_parent(path)


class ConfigMapRef(ApiModel):
    """One key of a ConfigMap, mounted as a file."""

    name: DnsName = Field(description="Name of the ConfigMap (a DNS-1123 subdomain).")
    key: ConfigKey = Field(description="Key whose value is the file's content.")


class SecretKeyRef(ApiModel):
    """A Secret key, read by reference so the value never appears in a spec."""

    name: DnsName = Field(description="Name of the Secret (a DNS-1123 subdomain).")
    key: ConfigKey = Field(default="token", description="Key inside the Secret.")


class DataSource(ApiModel):
    """Where a file comes from: exactly one of path, pvc, configMap or uri."""

    path: str | None = Field(
        default=None,
        description="Local path, as the trainer process sees it (kubetune train, or a mounted volume).",
    )
    pvc: PvcRef | None = Field(default=None, description="A file on a PersistentVolumeClaim.")
    config_map: ConfigMapRef | None = Field(default=None, description="A key of a ConfigMap.")
    uri: str | None = Field(
        default=None,
        max_length=formats.PATH_MAX,
        description="file:///local/path, or s3://bucket/key (a file, or a folder when it ends "
        "with /; downloaded into the cache first; see spec.storage).",
    )

    @field_validator("uri")
    @classmethod
    def _readable(cls, uri: str | None) -> str | None:
        return check_uri(uri)

    @model_validator(mode="after")
    def _exactly_one(self) -> DataSource:
        given = [n for n in ("path", "pvc", "config_map", "uri") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of path, pvc, configMap, uri (got {len(given)})")
        return self


class ModelSpec(ApiModel):
    """The base model to fine-tune."""

    name: str = Field(
        min_length=1,
        description="Hub id such as Qwen/Qwen3-8B, or a local directory with config.json and weights.",
    )
    source: DataSource | None = Field(
        default=None, description="Where the weights are, if not fetched by name (pvc or uri)."
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret holding a hub token, exposed to the trainer as HF_TOKEN."
    )


class MixtureEntry(ApiModel):
    """One dataset of a multi-task mixture."""

    name: str = Field(min_length=1, description="Task name; per-task metrics use it.")
    train: DataSource = Field(description="Training file of this task.")
    eval: DataSource | None = Field(default=None, description="Evaluation file of this task.")
    weight: float = Field(default=1.0, gt=0, description="Relative sampling weight.")
    task: str | None = Field(
        default=None, description="Optional task tag (e.g. qa, summary) for reporting."
    )


class DatasetSpec(ApiModel):
    """Training and evaluation data, their format and how rows are filtered."""

    train: DataSource | None = Field(default=None, description="Training data (JSONL).")
    eval: DataSource | None = Field(default=None, description="Evaluation data (JSONL).")
    format: Literal["input-target", "messages", "text"] = Field(
        default="input-target",
        description="input-target: {input, target} lines; messages: chat {messages: [{role, content}]}; "
        "text: {text} lines for continued pre-training.",
    )
    max_input_tokens: int = Field(
        default=2048, ge=1, le=131072, description="Longer prompts are truncated from the left."
    )
    max_target_tokens: int = Field(
        default=512, ge=1, le=131072, description="Longer targets are truncated from the right."
    )
    dedupe: bool = Field(
        default=True, description="Drop exact duplicate rows (counted in the summary)."
    )
    on_invalid_line: Literal["fail", "skip"] = Field(
        default="fail",
        description="fail: stop with the line number and reason; skip: skip the line and count it.",
    )
    mixture: list[MixtureEntry] | None = Field(
        default=None,
        max_length=32,
        description="Several weighted datasets trained jointly (multi-task).",
    )

    mixture_temperature: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description="Sampling temperature over mixture sizes x weights: 1 = proportional, larger = flatter.",
    )
    augmentation: AugmentationSpec | None = Field(
        default=None, description="Extra training rows from synonyms or back-translation."
    )

    @model_validator(mode="after")
    def _has_train(self) -> DatasetSpec:
        if self.train is None and not self.mixture:
            raise ValueError("set train (or mixture): there is no training data")
        return self


class MethodSpec(ApiModel):
    """The parameter-efficient fine-tuning method and its size."""

    type: Literal["lora", "qlora", "adapter", "prefix-tuning"] = Field(
        default="lora",
        description="lora; qlora (4-bit base + LoRA); adapter (Houlsby bottleneck); prefix-tuning.",
    )
    rank: int = Field(
        default=8, ge=1, le=1024, description="LoRA rank: higher = more capacity and memory."
    )
    alpha: float = Field(
        default=16.0, gt=0, description="LoRA scaling numerator (scale = alpha / rank)."
    )
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        max_length=64,
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        min_length=1,
        description="Module names LoRA wraps (default: all attention and MLP projections).",
    )
    num_virtual_tokens: int = Field(
        default=20, ge=1, le=512, description="Prefix length for prefix-tuning."
    )
    bottleneck_size: int = Field(
        default=64, ge=1, le=65536, description="Hidden size of the bottleneck adapter."
    )


class TrainingSpec(ApiModel):
    """Optimisation, precision, batching and checkpointing."""

    epochs: int = Field(default=3, ge=1, le=1000, description="Passes over the training data.")
    batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Global batch in sequences per optimizer step "
        "(= microBatchSize x gradientAccumulationSteps x processes). Default: derived.",
    )
    micro_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Sequences per forward pass per process. Default: derived.",
    )
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=4096, description="Micro-batches accumulated per optimizer step."
    )
    learning_rate: float = Field(
        default=2e-4, gt=0, le=1, description="Peak learning rate (AdamW)."
    )
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")
    warmup_ratio: float = Field(
        default=0.1, ge=0, lt=1, description="Fraction of steps with linear warm-up."
    )
    scheduler: Literal["cosine", "linear", "constant"] = Field(
        default="cosine", description="Learning-rate decay after warm-up."
    )
    max_grad_norm: float = Field(
        default=1.0, ge=0, description="Gradient clipping norm (0 disables)."
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto",
        description="Compute precision; fp16 uses dynamic loss scaling. auto, resolved once at "
        "start: bf16 on GPUs with bf16 and on CPUs with AMX-BF16, fp16 on other GPUs, else fp32.",
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        default="auto",
        description="true, false or auto. Recompute activations in backward to save memory "
        "(~20-30% slower). auto, resolved once at start: on only when the memory pre-flight says "
        "the run does not fit without it.",
    )
    zero_stage: Literal[0, 2, 3] = Field(
        default=0,
        description="0: replicate; 2: shard gradients and optimizer state (FSDP2, no reshard); "
        "3: also shard parameters.",
    )
    dynamic_batching: Literal["packing", "length-grouped", "none"] = Field(
        default="length-grouped",
        description="packing: padding-free concatenation; length-grouped: batch similar lengths; none.",
    )
    max_tokens_per_batch: int | None = Field(
        default=None,
        ge=16,
        description="Token budget of a packed micro-batch at the run's first microBatchSize "
        "(default: microBatchSize x the longest example). An out-of-memory retry that halves "
        "microBatchSize halves the budget too; optimizer steps keep the same examples.",
    )
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps."
    )
    seed: int = Field(default=42, ge=0, description="Seed for data order, dropout and init.")
    eval_every_steps: int | None = Field(
        default=None, ge=1, description="Evaluate every N steps (and at the end)."
    )
    save_every_steps: int | None = Field(
        default=None,
        ge=1,
        description="Also checkpoint every N optimizer steps (besides checkpointEveryMinutes). "
        "Whatever the intervals, a checkpoint is written after the last step and when the pod "
        "is asked to stop (SIGTERM).",
    )
    checkpoint_every_minutes: float = Field(
        default=10,
        ge=0,
        le=1440,
        description="Checkpoint when this many minutes have passed since the last checkpoint "
        "(or the start), checked after every optimizer step; 0 turns the timer off. A kill loses "
        "at most this much training (or saveEverySteps steps, whichever comes first).",
    )
    repetition_penalty: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="Weight of the token-level unlikelihood loss on tokens already in the target "
        "prefix (Welleck et al., 2019); 0 disables it.",
    )
    logging_steps: int = Field(default=1, ge=1, description="Log a JSON line every N steps.")
    loss_chunk_size: int = Field(
        default=256,
        ge=16,
        description="Tokens per chunk of the fused output-projection + loss; its fp32 logits peak "
        "at 12 B x chunk x vocab (1.9 GB at 1024 on Qwen3's vocabulary, 0.47 GB at 256).",
    )

    @model_validator(mode="after")
    def _batch_consistent(self) -> TrainingSpec:
        accum = self.gradient_accumulation_steps
        if self.batch_size is not None and self.micro_batch_size is not None:
            if self.batch_size % (self.micro_batch_size * accum) != 0:
                raise ValueError(
                    f"batchSize ({self.batch_size}) must be a multiple of microBatchSize x "
                    f"gradientAccumulationSteps ({self.micro_batch_size} x {accum})"
                )
        elif self.batch_size is not None and self.batch_size % accum != 0:
            raise ValueError(
                f"batchSize ({self.batch_size}) must be a multiple of gradientAccumulationSteps ({accum})"
            )
        return self

    def resolved_micro_batch(self, world_size: int = 1) -> int:
        """Micro-batch per process: given, or batchSize / (accumulation x processes), or 4."""
        if self.micro_batch_size is not None:
            return self.micro_batch_size
        if self.batch_size is None:
            return 4
        per = self.batch_size // (self.gradient_accumulation_steps * world_size)
        if per < 1 or per * self.gradient_accumulation_steps * world_size != self.batch_size:
            raise ValueError(
                f"training.batchSize {self.batch_size} is not divisible by gradientAccumulationSteps "
                f"x processes ({self.gradient_accumulation_steps} x {world_size})"
            )
        return per


class OutputSpec(ApiModel):
    """Where the adapter, checkpoints and summary are written."""

    path: str | None = Field(default=None, description="Local directory (kubetune train).")
    pvc: PvcRef | None = Field(default=None, description="A PersistentVolumeClaim folder.")
    uri: str | None = Field(
        default=None,
        max_length=formats.PATH_MAX,
        description="s3://bucket/prefix: the adapter, summary.json, run.json and every checkpoint "
        "are uploaded there (a checkpoint counts once its MANIFEST.json is written, last); "
        "file:// (kubetune train only) is a local folder.",
    )

    @field_validator("uri")
    @classmethod
    def _writable(cls, uri: str | None) -> str | None:
        return check_uri(uri)


Quantity = int | Annotated[str, Field(max_length=64, pattern=formats.QUANTITY)]
LabelValue = Annotated[str, Field(max_length=formats.LABEL_VALUE_MAX, pattern=formats.LABEL_VALUE)]


class Toleration(ApiModel):
    """A pod toleration (as in core/v1)."""

    key: str | None = Field(
        default=None,
        max_length=formats.KEY_MAX,
        pattern=formats.QUALIFIED_NAME,
        description="Taint key (a label key); unset with operator Exists matches all.",
    )
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: LabelValue | None = Field(default=None, description="Taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute only: how long to stay bound."
    )

    @model_validator(mode="after")
    def _as_core_v1(self) -> Toleration:
        """What the API server would refuse in a pod (so it is refused here, at apply)."""
        if self.operator == "Exists" and self.value:
            raise ValueError("value must be empty when operator is Exists")
        if self.key is None and self.operator != "Exists":
            raise ValueError("operator must be Exists when key is empty")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


class ComputeResources(ApiModel):
    """Container requests and limits besides GPUs, e.g. {requests: {cpu: 8, memory: 64Gi}}."""

    requests: dict[str, Quantity] | None = Field(
        default=None,
        max_length=formats.MAP_MAX,
        description="Minimum resources (cpu: 8, memory: 64Gi); quantities as Kubernetes writes them.",
    )
    limits: dict[str, Quantity] | None = Field(
        default=None,
        max_length=formats.MAP_MAX,
        description="Maximum resources (cpu, memory, ...); quantities as Kubernetes writes them.",
    )

    @field_validator("requests", "limits")
    @classmethod
    def _resource_names(cls, values: dict[str, Quantity] | None) -> dict[str, Quantity] | None:
        _check_keys(values, "resource name")
        for name, value in (values or {}).items():
            if isinstance(value, int) and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        return values


class ResourcesSpec(ApiModel):
    """Pods, GPUs and placement (Kubernetes only)."""

    gpus_per_node: int = Field(
        default=1, ge=0, le=16, description="nvidia.com/gpu per pod; one process per GPU."
    )
    gpu_memory: str | None = Field(
        default=None,
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$",
        description="Memory of one GPU (e.g. 80Gi, 24G) for the memory pre-flight; default: the "
        "operator's setting (chart value defaults.gpuMemory).",
    )
    nodes: int = Field(
        default=1,
        ge=1,
        le=128,
        description="Pods (nodes); >1 uses an Indexed Job and torchrun rendezvous.",
    )
    node_selector: dict[str, LabelValue] | None = Field(
        default=None,
        max_length=formats.MAP_MAX,
        description="Node labels the pods require (label keys and values).",
    )
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=32, description="Pod tolerations."
    )
    resources: ComputeResources | None = Field(
        default=None, description="Container requests/limits besides the GPUs (cpu, memory)."
    )
    image: str | None = Field(
        default=None,
        max_length=formats.IMAGE_MAX,
        pattern=formats.IMAGE,
        description="Trainer image, [registry/]repository[:tag][@sha256:digest] "
        "(default: the operator's setting).",
    )
    termination_grace_period_seconds: int | None = Field(
        default=None,
        ge=1,
        le=86400,
        description="Seconds a trainer pod has after SIGTERM (eviction, preemption, deletion) to "
        "write its checkpoint and exit Preempted; default: the operator's setting (chart value "
        "defaults.terminationGracePeriodSeconds, 120).",
    )

    @field_validator("node_selector")
    @classmethod
    def _label_keys(cls, values: dict[str, str] | None) -> dict[str, str] | None:
        _check_keys(values, "nodeSelector key")
        return values


class RetrySpec(ApiModel):
    """What the operator does when an attempt fails."""

    max_retries: int = Field(
        default=2,
        ge=0,
        le=20,
        description="Further attempts after failed ones (OOM, NaN, errors). Disruptions "
        "(preemption, eviction, pod deletion) do not count: see maxPreemptions.",
    )
    max_preemptions: int = Field(
        default=10,
        ge=0,
        le=40,
        description="Attempts restarted after a disruption (the pod was preempted, evicted or "
        "deleted and exited Preempted after its checkpoint); they resume unchanged and spend "
        "none of maxRetries. One more disruption fails the job.",
    )
    on_out_of_memory: bool = Field(
        default=True,
        description="On OOM halve microBatchSize and double gradientAccumulationSteps (same effective batch).",
    )
    on_na_n: bool = Field(
        default=True,
        alias="onNaN",
        description="On NaN/inf loss roll back to the last good checkpoint with the learning rate divided by 3 "
        "(never below 1e-6).",
    )


class FineTuneJobSpec(ApiModel):
    """What a FineTuneJob asks for."""

    model: ModelSpec = Field(description="The base model.")
    dataset: DatasetSpec = Field(description="Training and evaluation data.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="The PEFT method.")
    training: TrainingSpec = Field(
        default_factory=TrainingSpec, description="Optimisation settings."
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="GPUs and placement."
    )
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where results go.")
    storage: StorageSpec | None = Field(
        default=None, description="How the pods reach the object store of s3:// URIs."
    )
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec,
        description="Kueue queue, priority class, extra labels and annotations of the Jobs.",
    )
    retry: RetrySpec = Field(default_factory=RetrySpec, description="Automatic retries.")
    suspend: bool = Field(
        default=False, description="true stops the running pod and keeps checkpoints."
    )
    search: SearchSpec | None = Field(
        default=None,
        description="Run a hyperparameter search; the best trial's adapter is the output.",
    )
    strict_preflight: bool = Field(
        default=False,
        description="Fail before any pod starts (instead of a MemoryFits=False warning) when the "
        "estimated peak memory per GPU exceeds resources.gpuMemory.",
    )
    pending_timeout_seconds: int | None = Field(
        default=None, ge=1, description="Fail the job if its pod stays Pending this long."
    )
