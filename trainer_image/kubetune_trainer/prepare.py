"""Everything the loop needs from the data: tokenizer, tokenized examples, stats, and, for a
multi-task mixture, which examples each epoch draws.

A single dataset is used as it is, every row once per epoch. A mixture (`dataset.mixture`) draws
`count_i = round(N * p_i)` rows of task i per epoch, N the total row count and
`p_i ~ (rows_i * weight_i) ** (1 / mixtureTemperature)` (temperature sampling, as in T5/mT5:
1 = proportional to size x weight, larger = flatter), cycling through a seeded permutation of
each task's rows so no row repeats before all have been seen. Called by `train.run`.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_api import ConfigError, DataSource, TrainerConfig
from kubetune_api.trainer_config import data_source_path
from kubetune_trainer.data import DataStats, Example, load_examples


@dataclass
class Prepared:
    """Tokenizer, examples and their provenance."""

    tokenizer: Any
    train: list[Example]
    eval: list[Example]
    stats: dict[str, DataStats]
    data_hash: str
    task_weights: dict[str, float] = field(default_factory=dict)  # empty: not a mixture
    temperature: float = 1.0

    def eval_by_task(self) -> dict[str, list[Example]]:
        tasks: dict[str, list[Example]] = {}
        for ex in self.eval:
            if ex.task is not None:
                tasks.setdefault(ex.task, []).append(ex)
        return tasks if len(tasks) > 1 else {}

    def epoch_indices(self, seed: int, epoch: int) -> list[int]:
        """Indices into `train` drawn for this epoch (all of them, once, without a mixture)."""
        if not self.task_weights:
            return list(range(len(self.train)))
        by_task: dict[str, list[int]] = {}
        for i, ex in enumerate(self.train):
            by_task.setdefault(str(ex.task), []).append(i)
        probs = mixture_probabilities(
            {t: len(ix) for t, ix in by_task.items()}, self.task_weights, self.temperature
        )
        total = len(self.train)
        chosen: list[int] = []
        for task, rows in by_task.items():
            chosen += _cycle(rows, round(total * probs[task]), seed, epoch, task)
        return sorted(chosen)


def mixture_probabilities(
    sizes: dict[str, int], weights: dict[str, float], temperature: float
) -> dict[str, float]:
    """Temperature-scaled sampling probabilities of each task."""
    raw = {t: (sizes[t] * weights[t]) ** (1.0 / temperature) for t in sizes}
    norm = sum(raw.values())
    return {t: v / norm for t, v in raw.items()}


def _cycle(rows: list[int], count: int, seed: int, epoch: int, task: str) -> list[int]:
    """`count` rows of one task for `epoch`: continuing a per-task permutation across epochs."""
    rng = random.Random(f"{seed}:{task}")
    order = rows[:]
    rng.shuffle(order)
    start = (epoch * count) % len(order)
    return [order[(start + k) % len(order)] for k in range(count)]


def _path(source: DataSource | None, field_name: str) -> str | None:
    if source is None:
        return None
    path = data_source_path(source)
    if path is None:
        raise ConfigError([f"{field_name}: the trainer reads a local path (path or file:// uri)"])
    return path


def prepare_data(cfg: TrainerConfig) -> Prepared:
    """Tokenize every train/eval file (each task's, for a mixture); raises DataError on a bad line."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name)
    ds = cfg.dataset
    sources: list[tuple[str | None, DataSource | None, DataSource | None, str]] = [
        (m.name, m.train, m.eval, f"dataset.mixture[{i}]") for i, m in enumerate(ds.mixture or [])
    ]
    if not sources:
        sources = [(None, ds.train, ds.eval, "dataset")]
    train: list[Example] = []
    evals: list[Example] = []
    stats: dict[str, DataStats] = {}
    paths: list[str] = []
    for task, train_src, eval_src, where in sources:
        suffix = f"/{task}" if task else ""
        train_path = _path(train_src, f"{where}.train")
        assert train_path is not None  # the schema requires train (or a mixture, each with train)
        examples, stats[f"train{suffix}"] = load_examples(
            train_path, ds, tokenizer, task=task, progress=True
        )
        train += examples
        paths.append(train_path)
        if ds.augmentation is not None and ds.augmentation.max_rows > 0:
            train += _augmented(cfg, train_path, tokenizer, task, stats, suffix)
        eval_path = _path(eval_src, f"{where}.eval") or (
            _path(ds.eval, "dataset.eval") if not task else None
        )
        if eval_path is not None:
            examples, stats[f"eval{suffix}"] = load_examples(eval_path, ds, tokenizer, task=task)
            evals += examples
            paths.append(eval_path)
    weights = {m.name: m.weight for m in ds.mixture or []}
    return Prepared(
        tokenizer, train, evals, stats, _files_hash(paths), weights, ds.mixture_temperature
    )


def _augmented(
    cfg: TrainerConfig,
    train_path: str,
    tokenizer: Any,
    task: str | None,
    stats: dict[str, DataStats],
    suffix: str,
) -> list[Example]:
    """Rows derived from the training file only (eval is never augmented), counted separately."""
    from kubetune_trainer.augment import augment_file

    ds = cfg.dataset
    assert ds.augmentation is not None
    out = Path(cfg.output.path or "output") / f"augmented_train{suffix.replace('/', '_')}.jsonl"
    aug_stats = augment_file(train_path, ds.augmentation, fmt=ds.format, out_path=out)
    examples, stats[f"augmented{suffix}"] = load_examples(out, ds, tokenizer, task=task)
    out.with_suffix(".stats.json").write_text(
        json.dumps(aug_stats.to_dict(), indent=2, ensure_ascii=False)
    )
    return examples


def _files_hash(paths: list[str]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(Path(p).read_bytes())
    return digest.hexdigest()[:16]
