"""The trainer's data pipeline: JSONL -> tokenized, masked examples -> dynamic micro-batches.

The training loop calls `load_examples` for each file, `plan_batches` once per epoch and
`collate` once per micro-batch; the run summary records `DataStats.to_dict()` (which carries the
file's sha256). Modules: `jsonl` reads and validates lines, `formatting` renders Qwen3 chats and
masks the loss, `filters` drops, truncates and counts, `batching` groups and pads, `loader` ties
the first three together. Nothing here touches a model or a device.
"""

from kubetune_trainer.data.batching import (
    Batch,
    BatchingMode,
    collate,
    padding_fraction,
    plan_batches,
    plan_padding_fraction,
)
from kubetune_trainer.data.filters import DataStats
from kubetune_trainer.data.formatting import IGNORE_INDEX, ChatEncoder, Example
from kubetune_trainer.data.jsonl import DataError, file_sha256
from kubetune_trainer.data.loader import load_examples

__all__ = [
    "IGNORE_INDEX",
    "Batch",
    "BatchingMode",
    "ChatEncoder",
    "DataError",
    "DataStats",
    "Example",
    "collate",
    "file_sha256",
    "load_examples",
    "padding_fraction",
    "plan_batches",
    "plan_padding_fraction",
]
