"""Schema of the training extras: data augmentation and Bayesian hyperparameter search.

Referenced from `DatasetSpec.augmentation` and `FineTuneJobSpec.search` / `TrainerConfig.search`,
so the CRD documents them and the trainer, `kubetune tune` and the operator read one definition.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kubetune_api.base import ApiModel


class SynonymAugmentation(ApiModel):
    """Replace words with synonyms from a user-supplied dictionary (Chinese and English)."""

    dictionary: str = Field(
        min_length=1,
        description="Path of a JSON file {word: [synonym, ...]} or a TSV file (word<TAB>syn1,syn2).",
    )
    probability: float = Field(
        default=0.1, gt=0, le=1, description="Chance that each eligible word is replaced."
    )


class BackTranslation(ApiModel):
    """Paraphrase rows by translating source -> pivot -> source through an OpenAI-compatible API."""

    endpoint: str = Field(
        min_length=1,
        description="Base URL of an OpenAI-compatible server, e.g. http://translator:8000/v1.",
    )
    model: str = Field(default="default", description="Model name sent in each request.")
    pivot_language: str = Field(default="English", description="Language to translate through.")
    source_language: str = Field(default="Chinese", description="Language of the rows.")
    api_key_env: str | None = Field(
        default=None,
        description="Environment variable holding the bearer token (set it from a Secret).",
    )
    timeout_seconds: float = Field(default=30.0, gt=0, le=600, description="Per-request timeout.")


class AugmentationSpec(ApiModel):
    """Extra training rows derived from the training set (never from eval)."""

    synonyms: SynonymAugmentation | None = Field(default=None, description="Synonym replacement.")
    back_translation: BackTranslation | None = Field(default=None, description="Back-translation.")
    max_rows: int = Field(
        default=1000,
        ge=0,
        le=10_000_000,
        description="Most rows added in total (0 disables augmentation).",
    )
    seed: int = Field(
        default=0, ge=0, description="Seed of the random choices (deterministic augmentation)."
    )


class FloatRange(ApiModel):
    """A continuous search range."""

    low: float = Field(description="Lower bound.")
    high: float = Field(description="Upper bound.")
    log: bool = Field(default=False, description="Sample on a log scale (learning rates).")

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log ranges need low > 0, got {self.low}")
        return self


class IntChoices(ApiModel):
    """A discrete set of integer values."""

    choices: list[int] = Field(min_length=1, max_length=64, description="Values to try.")


# search.space field -> (config section, wire key) it sets; `kubetune tune` and the operator's
# spec.search both apply trial values through it.
SEARCH_PARAMS: dict[str, tuple[str, str]] = {
    "learning_rate": ("training", "learningRate"),
    "rank": ("method", "rank"),
    "epochs": ("training", "epochs"),
    "gradient_accumulation_steps": ("training", "gradientAccumulationSteps"),
    "warmup_ratio": ("training", "warmupRatio"),
    "dropout": ("method", "dropout"),
}


class SearchSpace(ApiModel):
    """Which hyperparameters to search; unset ones keep the config's value."""

    learning_rate: FloatRange | None = Field(default=None, description="training.learningRate.")
    rank: IntChoices | None = Field(default=None, description="method.rank.")
    epochs: IntChoices | None = Field(default=None, description="training.epochs.")
    gradient_accumulation_steps: IntChoices | None = Field(
        default=None, description="training.gradientAccumulationSteps."
    )
    warmup_ratio: FloatRange | None = Field(default=None, description="training.warmupRatio.")
    dropout: FloatRange | None = Field(default=None, description="method.dropout.")


class SearchSpec(ApiModel):
    """Bayesian hyperparameter search (Optuna TPE) with median pruning on eval loss."""

    trials: int = Field(default=8, ge=1, le=1000, description="Trials to run.")
    parallel_trials: int = Field(default=1, ge=1, le=64, description="Trials run at once.")
    metric: Literal["eval_loss"] = Field(default="eval_loss", description="What to minimise.")
    pruning: Literal["median", "none"] = Field(
        default="median",
        description="Stop trials whose intermediate eval loss is worse than the median.",
    )
    space: SearchSpace = Field(default_factory=SearchSpace, description="The search space.")
    seed: int = Field(default=0, ge=0, description="Sampler seed.")
