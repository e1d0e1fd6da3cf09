"""Kubetune's one typed schema: the FineTuneJob/ModelDeployment API and the trainer config.

This package is a leaf: it imports pydantic and PyYAML only, never the operator, trainer or
server. The CRD generator, the operator's spec parsing and the trainer's config loading all
read the same classes, so a field exists (with its description, bounds and default) once.
"""

from kubetune_api.errors import ConfigError
from kubetune_api.finetune import (
    DatasetSpec,
    DataSource,
    FineTuneJobSpec,
    MethodSpec,
    ModelSpec,
    OutputSpec,
    TrainingSpec,
)
from kubetune_api.names import GROUP, VERSION
from kubetune_api.trainer_config import TrainerConfig, load_trainer_config

__all__ = [
    "GROUP",
    "VERSION",
    "ConfigError",
    "DataSource",
    "DatasetSpec",
    "FineTuneJobSpec",
    "MethodSpec",
    "ModelSpec",
    "OutputSpec",
    "TrainerConfig",
    "TrainingSpec",
    "load_trainer_config",
]
