"""The trainer's method registry: the torch half of every `method.type`, consistent with its traits."""

from __future__ import annotations

from typing import get_args

import pytest
from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig

from kubetune_api.finetune import MethodSpec
from kubetune_api.methods import METHODS
from kubetune_trainer.methods import TRAINER_METHODS, loaded_method, method_for
from kubetune_trainer.methods.bottleneck import BottleneckConfig


def test_every_method_type_has_a_trainer_method() -> None:
    assert set(TRAINER_METHODS) == set(get_args(MethodSpec.model_fields["type"].annotation))
    for name, method in TRAINER_METHODS.items():
        assert method.traits is METHODS[name]
        assert method_for(MethodSpec(type=name)) is method  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(TRAINER_METHODS))
def test_merge_refusal_matches_the_mergeable_trait(name: str) -> None:
    method = TRAINER_METHODS[name]
    assert bool(method.merge_refusal) != method.traits.mergeable
    if method.merge_refusal:
        assert f"method.type {name!r}" in method.merge_refusal


@pytest.mark.parametrize("name", list(TRAINER_METHODS))
def test_built_config_is_found_again_once_loaded(name: str) -> None:
    method = TRAINER_METHODS[name]
    config = method.build_peft_config(MethodSpec(type=name))  # type: ignore[arg-type]
    assert loaded_method(config, quantized=method.traits.quantized_base) is method


def test_loaded_adapters_of_other_kinds() -> None:
    lora, qlora = TRAINER_METHODS["lora"], TRAINER_METHODS["qlora"]
    assert loaded_method(LoraConfig(), quantized=True) is qlora
    assert loaded_method(LoraConfig(), quantized=False) is lora
    prompt = PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM")
    assert loaded_method(prompt, quantized=False) is TRAINER_METHODS["prefix-tuning"]
    assert loaded_method(PrefixTuningConfig(num_virtual_tokens=4), quantized=True).peft_type == (
        "PREFIX_TUNING"
    )
    assert loaded_method(BottleneckConfig(), quantized=True) is TRAINER_METHODS["adapter"]
