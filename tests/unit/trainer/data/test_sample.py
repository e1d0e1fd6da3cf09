"""The bundled sample data: regenerated exactly by its script, loads cleanly, batches well."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from kubetune_api.finetune import DatasetSpec
from kubetune_trainer.data import BatchingMode, load_examples, plan_batches, plan_padding_fraction

SAMPLES = Path(__file__).parents[4] / "examples" / "data"
SEED_LINE = (
    '{"input": "用户：如何申请信用卡？\\nAI助手：", "target": "您可通过银行官网、手机APP或线下网点'
    '提交申请，需准备身份证、收入证明等材料。"}'
)


def _make_sample() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "kubetune_sample_generator", SAMPLES / "make_sample.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_committed_files_are_what_the_script_writes() -> None:
    make_sample = _make_sample()
    for name, rows in make_sample.build().items():
        assert (SAMPLES / name).read_text(encoding="utf-8") == make_sample.render(rows), name


def test_seed_line_is_the_first_training_row() -> None:
    first = (SAMPLES / "train.jsonl").read_text(encoding="utf-8").splitlines()[0]
    assert first == SEED_LINE


def test_eval_inputs_are_not_in_train() -> None:
    def inputs(name: str) -> set[str]:
        return set((SAMPLES / name).read_text(encoding="utf-8").splitlines())

    assert not inputs("train.jsonl") & inputs("eval.jsonl")


@pytest.fixture(scope="module")
def lengths(tiny_model_dir: Path) -> list[int]:
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(tiny_model_dir)
    path = SAMPLES / "train.jsonl"
    examples, stats = load_examples(path, DatasetSpec(train={"path": str(path)}), tokenizer)
    assert stats.kept == stats.lines_read == 287  # nothing dropped from the sample
    return [len(e.input_ids) for e in examples]


def test_padding_fraction_per_mode_on_the_sample(lengths: list[int]) -> None:
    """Packing pads nothing; length grouping pads far less than plain shuffling."""
    fractions: dict[BatchingMode, float] = {}
    for mode in ("none", "length-grouped", "packing"):
        plan = plan_batches(
            lengths, mode=mode, micro_batch_size=8, max_tokens=None, seed=42, epoch=0
        )
        fractions[mode] = plan_padding_fraction(plan, lengths, mode=mode)
    assert fractions["packing"] == 0.0
    assert fractions["length-grouped"] < 0.5 * fractions["none"]
