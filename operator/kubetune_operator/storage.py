"""What a pod needs to open s3:// URIs: the standard AWS_* environment and a download cache.

`storage_env` turns `spec.storage` into the variables boto3 reads (`AWS_ENDPOINT_URL_S3`, the
region, and the access keys as `secretKeyRef`s to the named Secret: values never enter a pod
spec); without a Secret the pod's own identity is used. `cache_volume` is the download cache
mounted at `CACHE_DIR` (`KUBETUNE_STORAGE_CACHE`): the named PersistentVolumeClaim, so a restart
does not download again, or an emptyDir limited to `cacheSize`. With a claim, `hf_home` puts the
Hugging Face cache there too (`HF_HOME`), so a hub model is not downloaded again on every pod
start either; without one it stays in the pod's /tmp. Pure; called by the FineTuneJob and
ModelDeployment pod builders.
"""

from __future__ import annotations

from typing import Any

from kubetune_api.storage import StorageSpec

Json = dict[str, Any]
CACHE_DIR = "/mnt/cache"
SCRATCH_HF_HOME = "/tmp/hf"  # the pod's emptyDir /tmp: gone with the pod
KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def storage_env(storage: StorageSpec | None) -> list[Json]:
    """The AWS_* variables (and the cache folder) for a pod that opens s3:// URIs."""
    spec = storage or StorageSpec()
    env: list[Json] = [{"name": "KUBETUNE_STORAGE_CACHE", "value": CACHE_DIR}]
    if spec.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": spec.endpoint})
    if spec.region:
        env.append({"name": "AWS_REGION", "value": spec.region})
    if spec.credentials_secret_ref is not None:
        name = spec.credentials_secret_ref.name
        env += [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}} for key in KEYS
        ]
    return env


def cache_volume(storage: StorageSpec | None) -> tuple[Json, Json]:
    """The download cache's volume and its mount (read-write: downloads land there)."""
    spec = storage or StorageSpec()
    if spec.cache_claim_name:
        volume: Json = {
            "name": "cache",
            "persistentVolumeClaim": {"claimName": spec.cache_claim_name},
        }
    else:
        volume = {"name": "cache", "emptyDir": {"sizeLimit": spec.cache_size}}
    return volume, {"name": "cache", "mountPath": CACHE_DIR}


def keeps_cache(storage: StorageSpec | None) -> bool:
    """Whether the download cache outlives the pod (a PersistentVolumeClaim is named)."""
    return storage is not None and storage.cache_claim_name is not None


def hf_home(storage: StorageSpec | None) -> str:
    """HF_HOME: on the cache claim when there is one, else in the pod's /tmp."""
    return f"{CACHE_DIR}/hf" if keeps_cache(storage) else SCRATCH_HF_HOME
