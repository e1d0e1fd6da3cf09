"""The trainer's config, and the loader that reads it from any of the three accepted forms.

`kubetune train` and `swift-finetune` call `load_trainer_config`. It accepts:
  (a) our YAML: top-level `model`, `dataset`, `method`, `training`, `output` (the FineTuneJob
      spec's field names, camelCase);
  (b) a whole FineTuneJob manifest (`kind: FineTuneJob`): its `spec` is used;
  (c) the seed article's flat format: model_name, framework, peft_method, lora_rank,
      batch_size, learning_rate, epochs, gradient_accumulation_steps; plus the extras the
      article promises: repetition_penalty, and our augmentation, mixture and search blocks.
Every problem is reported at once as a ConfigError, one line per field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import Field, ValidationError

from kubetune_api.base import ApiModel
from kubetune_api.errors import ConfigError
from kubetune_api.extras import SearchSpec
from kubetune_api.finetune import (
    DatasetSpec,
    DataSource,
    FineTuneJobSpec,
    MethodSpec,
    ModelSpec,
    OutputSpec,
    TrainingSpec,
)

M = TypeVar("M", bound=ApiModel)

# What the operator's retry policy changes between attempts of one run (OutOfMemory: micro-batch
# and accumulation; NaNLoss: learning rate). A checkpoint is resumed only under a config that
# differs from its own in these fields alone (and in `output`, which is where it was found).
RETRY_FIELDS = (
    "training.microBatchSize",
    "training.gradientAccumulationSteps",
    "training.learningRate",
)

SEED_KEYS = {
    "model_name",
    "framework",
    "peft_method",
    "lora_rank",
    "batch_size",
    "learning_rate",
    "epochs",
    "gradient_accumulation_steps",
}
# The seed's promises beyond plain fine-tuning, as extra keys of its flat format: a flat
# coefficient, or one of our blocks as it is (schema: kubetune_api.extras / finetune).
SEED_EXTRAS = {
    "repetition_penalty": ("training", "repetitionPenalty"),
    "augmentation": ("dataset", "augmentation"),
    "mixture": ("dataset", "mixture"),
    "search": ("", "search"),
}
SEED_FRAMEWORKS = {"ms-swift", "swift", "kubetune"}
SEED_METHODS = {
    "lora": "lora",
    "qlora": "qlora",
    "adapter": "adapter",
    "prefix-tuning": "prefix-tuning",
    "prefix_tuning": "prefix-tuning",
    "prefix": "prefix-tuning",
}


class TrainerConfig(ApiModel):
    """Everything one training run needs; the Kubernetes-only parts of the spec are absent."""

    model: ModelSpec = Field(description="The base model.")
    dataset: DatasetSpec = Field(description="Training and evaluation data.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="The PEFT method.")
    training: TrainingSpec = Field(
        default_factory=TrainingSpec, description="Optimisation settings."
    )
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where results go.")
    search: SearchSpec | None = Field(
        default=None, description="Hyperparameter search (kubetune tune)."
    )

    @classmethod
    def from_spec(cls, spec: FineTuneJobSpec) -> TrainerConfig:
        """The trainer's share of a FineTuneJob spec (used by the operator's ConfigMap)."""
        return cls(
            model=spec.model,
            dataset=spec.dataset,
            method=spec.method,
            training=spec.training,
            output=spec.output,
        )

    def config_hash(self) -> str:
        """A stable hash of the resolved config, recorded in the run summary."""
        blob = json.dumps(self.to_wire(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_trainer_config(
    path: str | Path,
    *,
    train_path: str | None = None,
    eval_path: str | None = None,
    output_dir: str | None = None,
) -> TrainerConfig:
    """Read a config file in any accepted form; command-line paths override the file's."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError([f"--config: cannot read {path}: {err.strerror}"]) from err
    except yaml.YAMLError as err:
        raise ConfigError([f"--config: {path} is not valid YAML: {err}"]) from err
    if not isinstance(raw, dict):
        raise ConfigError([f"--config: {path} must hold a mapping, got {type(raw).__name__}"])
    return parse_trainer_config(
        raw, train_path=train_path, eval_path=eval_path, output_dir=output_dir
    )


def parse_trainer_config(
    raw: dict[str, Any],
    *,
    train_path: str | None = None,
    eval_path: str | None = None,
    output_dir: str | None = None,
) -> TrainerConfig:
    """Validate a config mapping (our form, a FineTuneJob manifest, or the seed's form)."""
    prefix = ""
    if raw.get("kind") == "FineTuneJob":
        raw, prefix = _spec_of_manifest(raw), "spec"
    elif SEED_KEYS & raw.keys():
        raw = _from_seed(raw)
    raw = _apply_overrides(raw, train_path, eval_path, output_dir)
    if prefix:
        spec = _validate(FineTuneJobSpec, raw, prefix)
        return TrainerConfig.from_spec(spec)
    return _validate(TrainerConfig, raw, prefix)


def _validate(model: type[M], raw: dict[str, Any], prefix: str) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError.from_validation(err, prefix) from None


def _spec_of_manifest(raw: dict[str, Any]) -> dict[str, Any]:
    spec = raw.get("spec")
    if not isinstance(spec, dict):
        raise ConfigError(["spec: a FineTuneJob manifest needs a spec mapping"])
    return dict(spec)


def _from_seed(raw: dict[str, Any]) -> dict[str, Any]:
    """Map the seed article's flat keys onto our schema; unknown keys are errors."""
    known = SEED_KEYS | SEED_EXTRAS.keys()
    problems = [
        f"{k}: unknown field (seed-format keys: {', '.join(sorted(known))})"
        for k in raw
        if k not in known
    ]
    framework = raw.get("framework", "ms-swift")
    if str(framework).lower() not in SEED_FRAMEWORKS:
        problems.append(f"framework: must be one of {sorted(SEED_FRAMEWORKS)}, got {framework!r}")
    method = str(raw.get("peft_method", "lora"))
    if method.lower() not in SEED_METHODS:
        problems.append(
            f"peft_method: must be lora, qlora, adapter or prefix-tuning, got {method!r}"
        )
    if "model_name" not in raw:
        problems.append("model_name: required field is missing")
    if problems:
        raise ConfigError(problems)
    out: dict[str, Any] = {
        "model": {"name": raw["model_name"]},
        "method": {"type": SEED_METHODS[method.lower()]},
        "training": {},
        "dataset": {},
    }
    if "lora_rank" in raw:
        out["method"]["rank"] = raw["lora_rank"]
    for seed_key, key in (
        ("batch_size", "batchSize"),
        ("learning_rate", "learningRate"),
        ("epochs", "epochs"),
        ("gradient_accumulation_steps", "gradientAccumulationSteps"),
    ):
        if seed_key in raw:
            out["training"][key] = raw[seed_key]
    for seed_key, (section, key) in SEED_EXTRAS.items():
        if seed_key in raw:
            (out.setdefault(section, {}) if section else out)[key] = raw[seed_key]
    return out


def _apply_overrides(
    raw: dict[str, Any], train_path: str | None, eval_path: str | None, output_dir: str | None
) -> dict[str, Any]:
    raw = dict(raw)
    dataset = dict(raw.get("dataset") or {})
    if train_path is not None:
        dataset["train"] = {"path": train_path}
    if eval_path is not None:
        dataset["eval"] = {"path": eval_path}
    raw["dataset"] = dataset
    if output_dir is not None:
        raw["output"] = {"path": output_dir}
    return raw


def data_source_path(source: DataSource | None) -> str | None:
    """The local path a DataSource resolves to inside the trainer (path, or file:// uri)."""
    if source is None:
        return None
    if source.path is not None:
        return source.path
    if source.uri is not None and source.uri.startswith("file://"):
        return source.uri.removeprefix("file://")
    return None
