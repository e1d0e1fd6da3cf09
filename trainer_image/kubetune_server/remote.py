"""`s3://` base models and adapters for the server: downloaded into the local cache first.

`local_model` and `local_adapter` return a local folder for an `s3://` reference (downloaded by
`kubetune_trainer.storage.transfer` into `KUBETUNE_STORAGE_CACHE`, skipped when the cache already
holds the same objects) and anything else unchanged. An adapter counts only when the trainer
finished uploading it: its `MANIFEST.json` must exist, and every file must match it. Called by
`loading.load_model`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from kubetune_api.storage import is_s3

log = logging.getLogger(__name__)


def _fetch(uri: str) -> Path:
    from kubetune_trainer.storage.transfer import download

    started = time.perf_counter()
    path = download(uri.rstrip("/") + "/")
    log.info("downloaded %s to %s in %.1fs", uri, path, time.perf_counter() - started)
    return path


def local_model(model: str) -> str:
    """The base model's local folder (an s3:// prefix is downloaded), else `model` unchanged."""
    return str(_fetch(model)) if is_s3(model) else model


def local_adapter(adapter: Path | str | None) -> Path | None:
    """The adapter's local folder; an s3:// adapter must be complete (MANIFEST.json) and intact."""
    if adapter is None or not is_s3(str(adapter)):
        return Path(adapter) if adapter is not None else None
    from kubetune_trainer.storage import StorageError
    from kubetune_trainer.storage.transfer import MANIFEST, build_manifest, read_manifest

    uri = str(adapter)
    manifest = read_manifest(uri)
    if manifest is None:
        raise StorageError(f"{uri}: no complete adapter there ({MANIFEST} is missing)")
    path = _fetch(uri)
    local = build_manifest(path)
    if local["sha256"] != manifest["sha256"]:
        raise StorageError(
            f"{uri}: the downloaded adapter does not match its {MANIFEST} "
            f"(sha256 {local['sha256'][:12]} != {manifest['sha256'][:12]})"
        )
    return path
