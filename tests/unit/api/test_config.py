"""The trainer config loader: our YAML, a FineTuneJob manifest, the seed's format, and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetune_api import ConfigError, load_trainer_config
from kubetune_api.trainer_config import parse_trainer_config

SEED_CONFIG = """\
model_name: qwen3-7b
framework: ms-swift
peft_method: lora # 支持LoRA/Adapter/Prefix-tuning
lora_rank: 16 # 低秩矩阵维度
batch_size: 32
learning_rate: 3e-5
epochs: 3
gradient_accumulation_steps: 4 # 模拟大batch效果
"""


def test_seed_config_maps_onto_schema(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(SEED_CONFIG, encoding="utf-8")
    cfg = load_trainer_config(path, train_path="t.jsonl", eval_path="e.jsonl", output_dir="out")
    assert cfg.model.name == "qwen3-7b"
    assert cfg.method.type == "lora" and cfg.method.rank == 16
    assert cfg.training.learning_rate == pytest.approx(3e-5)  # YAML 1.1 reads 3e-5 as a string
    assert cfg.training.batch_size == 32 and cfg.training.gradient_accumulation_steps == 4
    assert cfg.training.resolved_micro_batch(world_size=1) == 8
    assert cfg.dataset.train is not None and cfg.dataset.train.path == "t.jsonl"
    assert cfg.output.path == "out"


@pytest.mark.parametrize(
    "method,expected",
    [("Adapter", "adapter"), ("Prefix-tuning", "prefix-tuning"), ("qlora", "qlora")],
)
def test_seed_method_names(method: str, expected: str) -> None:
    cfg = parse_trainer_config({"model_name": "m", "peft_method": method}, train_path="t.jsonl")
    assert cfg.method.type == expected


def test_all_problems_reported_at_once() -> None:
    raw = {
        "model": {"name": "m", "revison": "x"},
        "dataset": {"train": {"path": "t"}, "format": "csv"},
        "method": {"rank": 0},
        "training": {"learningRate": -1, "precision": "int3"},
    }
    with pytest.raises(ConfigError) as err:
        parse_trainer_config(raw)
    lines = err.value.problems
    assert "model.revison: unknown field" in lines
    assert any(line.startswith("dataset.format:") and "'csv'" in line for line in lines)
    assert any(line.startswith("method.rank:") and "got 0" in line for line in lines)
    assert any(line.startswith("training.learningRate:") and "got -1" in line for line in lines)
    assert any(line.startswith("training.precision:") and "'int3'" in line for line in lines)
    assert len(lines) == 5


def test_seed_format_takes_the_extras() -> None:
    cfg = parse_trainer_config(
        {
            "model_name": "m",
            "repetition_penalty": 0.5,
            "augmentation": {"synonyms": {"dictionary": "syn.json"}, "maxRows": 10},
            "mixture": [{"name": "qa", "train": {"path": "qa.jsonl"}, "weight": 2}],
            "search": {"trials": 8, "space": {"rank": {"choices": [8, 16]}}},
        }
    )
    assert cfg.training.repetition_penalty == 0.5
    assert cfg.dataset.augmentation is not None and cfg.dataset.augmentation.max_rows == 10
    assert cfg.dataset.mixture is not None and cfg.dataset.mixture[0].weight == 2
    assert cfg.search is not None and cfg.search.trials == 8
    with pytest.raises(ConfigError, match=r"search\.trials"):
        parse_trainer_config({"model_name": "m", "search": {"trials": 0}}, train_path="t.jsonl")


def test_seed_format_errors() -> None:
    with pytest.raises(ConfigError) as err:
        parse_trainer_config(
            {"model_name": "m", "peft_method": "ia3", "framework": "deepspeed", "lr": 1}
        )
    text = str(err.value)
    assert "lr: unknown field" in text
    assert "peft_method" in text and "'ia3'" in text
    assert "framework" in text and "'deepspeed'" in text


def test_finetunejob_manifest_is_accepted(tmp_path: Path) -> None:
    manifest = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "x"},
        "spec": {
            "model": {"name": "Qwen/Qwen3-8B"},
            "dataset": {"train": {"pvc": {"claimName": "data", "path": "train.jsonl"}}},
            "method": {"type": "qlora", "rank": 16},
            "resources": {"gpusPerNode": 2},
        },
    }
    path = tmp_path / "ftj.yaml"
    path.write_text(yaml.safe_dump(manifest))
    cfg = load_trainer_config(path, train_path="local.jsonl")
    assert cfg.method.type == "qlora" and cfg.dataset.train is not None
    assert cfg.dataset.train.path == "local.jsonl"


def test_manifest_errors_carry_spec_prefix() -> None:
    with pytest.raises(ConfigError) as err:
        parse_trainer_config(
            {
                "kind": "FineTuneJob",
                "spec": {"model": {"name": "m"}, "dataset": {}, "training": {"epochs": 0}},
            }
        )
    assert any(p.startswith("spec.training.epochs:") for p in err.value.problems)
    assert any(p.startswith("spec.dataset:") for p in err.value.problems)


def test_data_source_needs_exactly_one() -> None:
    with pytest.raises(ConfigError) as err:
        parse_trainer_config(
            {"model": {"name": "m"}, "dataset": {"train": {"path": "a", "uri": "file:///b"}}}
        )
    assert "exactly one of path, pvc, configMap, uri" in str(err.value)


def test_batch_arithmetic_checked() -> None:
    with pytest.raises(ConfigError) as err:
        parse_trainer_config(
            {
                "model": {"name": "m"},
                "dataset": {"train": {"path": "a"}},
                "training": {"batchSize": 10, "microBatchSize": 4, "gradientAccumulationSteps": 1},
            }
        )
    assert "batchSize (10)" in str(err.value)


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_trainer_config(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_trainer_config(bad)


def test_config_hash_is_stable() -> None:
    raw = {"model": {"name": "m"}, "dataset": {"train": {"path": "a"}}}
    assert parse_trainer_config(raw).config_hash() == parse_trainer_config(dict(raw)).config_hash()
