"""Moving files between `s3://` and local disk: cached downloads, folder uploads with a manifest.

`download` fetches an object, or every object under a prefix (a folder), into the download cache
(`cache_root()/<bucket>/<key>`; `KUBETUNE_STORAGE_CACHE` on a cluster is the pod's cache volume),
and skips a file whose size and ETag match what the cache already holds, so a restarted pod
does not download again. `upload_tree` uploads a folder file by file (multipart above 64 MiB,
8 parts in flight) and writes `MANIFEST.json` (name, size, sha256 of every file) last: a
folder counts as complete only once its manifest exists (`read_manifest`). `tree_hash` is the
content hash of such a folder (sha256 over the manifest's sorted entries). Called by `mirror`,
`kubetune_trainer.sources` and the server's model loading.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_api.storage import split_s3
from kubetune_trainer.storage.client import StorageError, explain, s3_client

MANIFEST = "MANIFEST.json"
ETAGS = ".s3-etags.json"  # beside cached files: name -> ETag it was downloaded at
MIB = 1024 * 1024
UPLOAD_DELAY_ENV = "KUBETUNE_TEST_UPLOAD_DELAY"  # test hook: seconds to sleep per uploaded file


def cache_root() -> Path:
    """The download cache: $KUBETUNE_STORAGE_CACHE, else ~/.cache/kubetune/storage."""
    chosen = os.environ.get("KUBETUNE_STORAGE_CACHE")
    return Path(chosen) if chosen else Path.home() / ".cache" / "kubetune" / "storage"


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=64 * MIB, multipart_chunksize=64 * MIB, max_concurrency=8
    )


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


@dataclass(frozen=True)
class RemoteObject:
    key: str
    size: int
    etag: str


def list_objects(uri: str) -> list[RemoteObject]:
    """Every object whose key starts with the URI's key (NoSuchBucket etc. as StorageError)."""
    bucket, prefix = split_s3(uri)
    found: list[RemoteObject] = []
    try:
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents") or []:
                found.append(RemoteObject(item["Key"], int(item["Size"]), item.get("ETag", "")))
    except Exception as err:
        raise explain(err, uri) from err
    return found


def list_folders(uri: str) -> list[str]:
    """The immediate sub-folder names under a prefix (`checkpoints/` -> step-000004, ...)."""
    bucket, prefix = split_s3(join(uri, "") if not uri.endswith("/") else uri)
    names: list[str] = []
    try:
        pages = (
            s3_client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        )
        for page in pages:
            for common in page.get("CommonPrefixes") or []:
                names.append(common["Prefix"][len(prefix) :].strip("/"))
    except Exception as err:
        raise explain(err, uri) from err
    return sorted(names)


def download(uri: str, dest: Path | None = None) -> Path:
    """The local copy of an object or a folder (a prefix), downloaded if not cached already."""
    bucket, key = split_s3(uri)
    dest = dest or cache_root() / bucket / key.strip("/")
    objects = list_objects(uri)
    exact = [o for o in objects if o.key == key]
    if exact and not key.endswith("/"):
        _fetch(bucket, exact[0], dest, uri)
        return dest
    prefix = key.rstrip("/") + "/" if key else ""
    inside = [o for o in objects if o.key.startswith(prefix) and not o.key.endswith("/")]
    if not inside:
        raise StorageError(
            f"{uri}: no object or folder there (bucket {bucket!r} has no key {key!r})"
        )
    for obj in inside:
        _fetch(bucket, obj, dest / obj.key[len(prefix) :], join(f"s3://{bucket}", obj.key))
    return dest


def _fetch(bucket: str, obj: RemoteObject, path: Path, uri: str) -> None:
    etags_file = path.parent / ETAGS
    etags = _read_json(etags_file)
    if path.exists() and path.stat().st_size == obj.size and etags.get(path.name) == obj.etag:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".part-{path.name}")
    try:
        s3_client().download_file(bucket, obj.key, str(tmp), Config=_transfer_config())
    except Exception as err:
        raise explain(err, uri) from err
    tmp.replace(path)
    etags[path.name] = obj.etag
    etags_file.write_text(json.dumps(etags, indent=1, sort_keys=True), encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _bookkeeping(path: Path) -> bool:
    """The manifest itself, the cache's ETag record and partial downloads: not content."""
    return path.name in (MANIFEST, ETAGS) or path.name.startswith(".part-")


def build_manifest(folder: Path) -> dict[str, Any]:
    """{"files": {relative name: {"size", "sha256"}}, "bytes", "sha256"} of a local folder."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not _bookkeeping(p)):
        files[path.relative_to(folder).as_posix()] = {
            "size": path.stat().st_size,
            "sha256": sha256_file(path),
        }
    return {
        "files": files,
        "bytes": sum(f["size"] for f in files.values()),
        "sha256": tree_hash(files),
    }


def tree_hash(files: dict[str, dict[str, Any]]) -> str:
    """Content hash of a folder: sha256 over 'name size sha256' lines in name order."""
    lines = "".join(f"{n} {f['size']} {f['sha256']}\n" for n, f in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def upload_file(path: Path, uri: str) -> None:
    bucket, key = split_s3(uri)
    try:
        s3_client().upload_file(str(path), bucket, key, Config=_transfer_config())
    except Exception as err:
        raise explain(err, uri) from err


def put_json(uri: str, data: Any) -> None:
    bucket, key = split_s3(uri)
    body = json.dumps(data, indent=1, sort_keys=True).encode()
    try:
        s3_client().put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    except Exception as err:
        raise explain(err, uri) from err


def get_json(uri: str) -> Any | None:
    """A small JSON object, or None when there is none (a missing bucket is still an error)."""
    bucket, key = split_s3(uri)
    try:
        body = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as err:
        if getattr(err, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise explain(err, uri) from err
    return json.loads(body)


def upload_tree(
    folder: Path, uri: str, on_file: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Upload every file of `folder` under `uri`, then MANIFEST.json last; return the manifest."""
    manifest = build_manifest(folder)
    delay = float(os.environ.get(UPLOAD_DELAY_ENV) or 0)
    for name in manifest["files"]:
        if on_file is not None:
            on_file(name)
        upload_file(folder / name, join(uri, name))
        if delay:
            time.sleep(delay)
    put_json(join(uri, MANIFEST), manifest)
    return manifest


def read_manifest(uri: str) -> dict[str, Any] | None:
    """The folder's manifest, or None while it is incomplete (no manifest yet)."""
    data = get_json(join(uri, MANIFEST))
    return data if isinstance(data, dict) else None


def delete_tree(uri: str) -> None:
    """Delete a folder: its manifest first, so a half-deleted folder never looks complete."""
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/") + "/"
    keys = [o.key for o in list_objects(join(uri, ""))]
    keys.sort(key=lambda k: k != prefix + MANIFEST)
    try:
        for k in keys:
            s3_client().delete_object(Bucket=bucket, Key=k)
    except Exception as err:
        raise explain(err, uri) from err
