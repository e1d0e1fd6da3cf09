"""ModelDeployment spec: names resolve, adapters name one source, bad values name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kubetune_api import ConfigError
from kubetune_api.deployment import ModelDeploymentSpec


def parse(raw: dict) -> ModelDeploymentSpec:
    try:
        return ModelDeploymentSpec.model_validate(raw)
    except ValidationError as err:
        raise ConfigError.from_validation(err, "spec") from None


def test_two_models_with_complexity_routing() -> None:
    spec = parse(
        {
            "models": [
                {"name": "large", "model": "Qwen/Qwen3-8B", "adapter": {"fineTuneJob": "faq"}},
                {"name": "small", "model": "Qwen/Qwen3-1.7B", "quantization": "none"},
            ],
            "routing": {"complexity": {"threshold": 0.4}},
        }
    )
    assert spec.routing.strategy == "complexity" and spec.models[0].quantization == "int8"
    assert spec.models[0].adapter is not None and spec.models[0].adapter.fine_tune_job == "faq"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"models": []}, "spec.models"),
        ({"models": [{"name": "Large!", "model": "m"}]}, "spec.models.0.name"),
        (
            {"models": [{"name": "a", "model": "m", "quantization": "int4"}]},
            "spec.models.0.quantization",
        ),
        (
            {
                "models": [
                    {"name": "a", "model": "m", "adapter": {"path": "/x", "uri": "s3://bkt/y"}}
                ]
            },
            "exactly one",
        ),
        ({"models": [{"name": "a", "model": "m"}, {"name": "a", "model": "n"}]}, "unique"),
        ({"models": [{"name": "a", "model": "m"}], "routing": {"default": "b"}}, "routing.default"),
        (
            {"models": [{"name": "big", "model": "m"}, {"name": "tiny", "model": "n"}]},
            "routing.complexity.large",
        ),
        (
            {"models": [{"name": "a", "model": "m"}], "server": {"maxBatchSize": 0}},
            "spec.server.maxBatchSize",
        ),
    ],
)
def test_invalid_specs_name_the_field(raw: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(raw)
    assert needle in str(err.value)
