"""The trainer's inputs made local: `s3://` data and base model downloaded into the cache first.

`localize` returns the config with every `s3://` dataset file (train, eval, each mixture entry)
and the model source replaced by the local path of its cached copy
(`storage.transfer.cache_root()`, the pod's cache volume on a cluster), and a `file://` model
source by its path. The run's identity keeps the config as written (the URIs), so a resume in
another pod with another cache path is the same run. Called by `train.fit` before any data or
weights load.
"""

from __future__ import annotations

import json
import sys
import time

from kubetune_api import TrainerConfig
from kubetune_api.finetune import DataSource
from kubetune_api.storage import FILE, is_s3


def _local(source: DataSource | None) -> DataSource | None:
    if source is None or not is_s3(source.uri):
        return source
    from kubetune_trainer.storage.transfer import download

    assert source.uri is not None
    started = time.perf_counter()
    path = download(source.uri)
    took = round(time.perf_counter() - started, 3)
    print(
        json.dumps({"event": "downloaded", "uri": source.uri, "path": str(path), "seconds": took}),
        file=sys.stderr,
        flush=True,
    )
    return DataSource(path=str(path))


def localize(cfg: TrainerConfig) -> TrainerConfig:
    """The config with every s3:// source replaced by its downloaded local copy."""
    dataset = cfg.dataset
    mixture = [
        m.model_copy(update={"train": _local(m.train), "eval": _local(m.eval)})
        for m in dataset.mixture or []
    ]
    dataset = dataset.model_copy(
        update={
            "train": _local(dataset.train),
            "eval": _local(dataset.eval),
            "mixture": mixture or None,
        }
    )
    model = cfg.model
    source = model.source
    if source is not None and source.uri is not None:
        local = _local(source) if is_s3(source.uri) else DataSource(path=source.uri[len(FILE) :])
        assert local is not None and local.path is not None
        model = model.model_copy(update={"name": local.path, "source": None})
    return cfg.model_copy(update={"dataset": dataset, "model": model})
