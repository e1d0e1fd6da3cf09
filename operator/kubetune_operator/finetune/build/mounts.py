"""Where a FineTuneJob's files appear inside the trainer pod: volumes, mounts and local paths.

Every PersistentVolumeClaim the spec names (output, data, model weights) is mounted once at
`/mnt/pvc/<claim>` (read-write only for the output claim); every ConfigMap data source at
`/mnt/configmaps/<name>`. `resolve_mounts` returns the volumes and mounts plus a function that
turns a spec `DataSource` into the path the trainer reads; `adapter_location` is where the
trained adapter is, seen from outside the pod (`status.output.adapterPath`). Pure; called by
`config` and `job`, and `adapter_location` by `attempts` and `search`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubetune_api.finetune import DataSource, FineTuneJobSpec
from kubetune_api.storage import is_s3
from kubetune_operator.names import PVC_ROOT
from kubetune_operator.storage import cache_volume, keeps_cache

CONFIGMAP_ROOT = "/mnt/configmaps"
SCRATCH_OUTPUT = "/mnt/output"  # emptyDir when the output is a uri (the image uploads it)
CONFIG_DIR = "/etc/kubetune"
CONFIG_KEY = "config.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"


@dataclass(frozen=True)
class Mounts:
    """Pod volumes, container volumeMounts, and the trainer's output folder."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    output_dir: str = SCRATCH_OUTPUT


def _join(root: str, sub: str) -> str:
    sub = sub.strip("/")
    return f"{root}/{sub}" if sub else root


def source_path(source: DataSource) -> DataSource:
    """The same source as the trainer sees it: a local path under a mount (or unchanged)."""
    if source.pvc is not None:
        return DataSource(path=_join(f"{PVC_ROOT}/{source.pvc.claim_name}", source.pvc.path))
    if source.config_map is not None:
        cm = source.config_map
        return DataSource(path=f"{CONFIGMAP_ROOT}/{cm.name}/{cm.key}")
    return source


def _sources(spec: FineTuneJobSpec) -> list[DataSource]:
    found = [spec.dataset.train, spec.dataset.eval, spec.model.source]
    for entry in spec.dataset.mixture or []:
        found += [entry.train, entry.eval]
    return [s for s in found if s is not None]


def uses_object_storage(spec: FineTuneJobSpec) -> bool:
    """Whether any source or the output is an s3:// URI (the pod then gets AWS_* and a cache)."""
    return is_s3(spec.output.uri) or any(is_s3(s.uri) for s in _sources(spec))


def output_dir(spec: FineTuneJobSpec, name: str) -> str:
    """The trainer's output folder: `<pvc mount>/<path or the FineTuneJob name>`."""
    pvc = spec.output.pvc
    if pvc is None:
        return SCRATCH_OUTPUT
    return _join(f"{PVC_ROOT}/{pvc.claim_name}", pvc.path or name)


def adapter_location(spec: FineTuneJobSpec, name: str, under: str = "") -> str:
    """Where the adapter is, as a reference that means something outside the pod; `under` is
    a folder below the output folder (a search trial's `trials/trial-NNNN`)."""
    out = spec.output
    tail = f"{under.strip('/')}/adapter" if under else "adapter"
    if out.pvc is not None:
        sub = (out.pvc.path or name).strip("/")
        return f"pvc://{out.pvc.claim_name}/{sub}/{tail}"
    return f"{(out.uri or '').rstrip('/')}/{tail}"


def resolve_mounts(spec: FineTuneJobSpec, name: str) -> Mounts:
    """Volumes and mounts for every claim and ConfigMap the spec names, in a stable order."""
    out_claim = spec.output.pvc.claim_name if spec.output.pvc else None
    data_claims = {s.pvc.claim_name for s in _sources(spec) if s.pvc}
    claims = sorted(data_claims | ({out_claim} if out_claim else set()))
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for i, claim in enumerate(claims):
        volumes.append(
            {
                "name": f"pvc-{i}",
                "persistentVolumeClaim": {"claimName": claim, "readOnly": claim != out_claim},
            }
        )
        mounts.append(
            {"name": f"pvc-{i}", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": claim != out_claim}
        )
    if out_claim is None:
        volumes.append({"name": "output", "emptyDir": {}})
        mounts.append({"name": "output", "mountPath": SCRATCH_OUTPUT})
    _config_map_volumes(spec, volumes, mounts)
    if uses_object_storage(spec) or keeps_cache(spec.storage):
        volume, mount = cache_volume(spec.storage)
        volumes.append(volume)
        mounts.append(mount)
    return Mounts(volumes, mounts, output_dir(spec, name))


def _config_map_volumes(
    spec: FineTuneJobSpec, volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]
) -> None:
    keys: dict[str, set[str]] = {}
    for s in _sources(spec):
        if s.config_map is not None:
            keys.setdefault(s.config_map.name, set()).add(s.config_map.key)
    for i, (cm, cm_keys) in enumerate(sorted(keys.items())):
        items = [{"key": k, "path": k} for k in sorted(cm_keys)]
        volumes.append({"name": f"cm-{i}", "configMap": {"name": cm, "items": items}})
        mounts.append({"name": f"cm-{i}", "mountPath": f"{CONFIGMAP_ROOT}/{cm}", "readOnly": True})
