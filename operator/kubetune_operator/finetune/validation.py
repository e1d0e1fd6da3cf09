"""Parse a FineTuneJob's `spec` and check what only the operator can judge.

The API server already enforces the CRD schema; pydantic re-checks it (a CRD installed from an
older release, or objects written with validation off) and adds cross-field rules. On top,
`cluster_problems` rejects what is valid for `kubetune train` but meaningless in a pod, such as
a local output path, or a search (`spec.search`) without eval data. Every problem names its
field: "spec.output: ...". Called by `plan`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kubetune_api.errors import ConfigError
from kubetune_api.finetune import DataSource, FineTuneJobSpec
from kubetune_api.methods import gpu_problems
from kubetune_api.storage import is_s3
from kubetune_operator.finetune.preflight import cache_problems
from kubetune_operator.finetune.topology import world_size
from kubetune_operator.names import GPU_RESOURCE


def parse_spec(raw: Any) -> FineTuneJobSpec:
    """The validated spec; raises ConfigError with one 'spec.<path>: reason' line per problem."""
    if not isinstance(raw, dict):
        raise ConfigError(["spec: required field is missing"])
    try:
        spec = FineTuneJobSpec.model_validate(raw)
    except ValidationError as err:
        raise ConfigError.from_validation(err, prefix="spec") from None
    problems = cluster_problems(spec)
    if problems:
        raise ConfigError(problems)
    return spec


def cluster_problems(spec: FineTuneJobSpec) -> list[str]:
    """Problems of a spec that is schema-valid but cannot run as a pod."""
    problems = _output_problems(spec) + _data_problems(spec) + _resource_problems(spec)
    problems += cache_problems(spec)
    problems += _search_problems(spec)
    try:
        spec.training.resolved_micro_batch(world_size(spec))
    except ValueError as err:
        problems.append(f"spec.training.batchSize: {err} (processes = nodes x gpusPerNode)")
    return problems


def _output_problems(spec: FineTuneJobSpec) -> list[str]:
    out = spec.output
    if out.path is not None:
        return ["spec.output.path: a local path does not outlive the pod; use spec.output.pvc"]
    if out.uri is not None and not is_s3(out.uri):
        return [
            "spec.output.uri: a file:// folder does not outlive the pod; use s3:// or spec.output.pvc"
        ]
    if out.pvc is None and out.uri is None:
        return ["spec.output: set pvc or uri (checkpoints and the adapter must outlive the pod)"]
    return []


def _sources(spec: FineTuneJobSpec) -> list[tuple[str, DataSource]]:
    found = [("spec.dataset.train", spec.dataset.train), ("spec.dataset.eval", spec.dataset.eval)]
    for i, entry in enumerate(spec.dataset.mixture or []):
        found += [(f"spec.dataset.mixture.{i}.train", entry.train)]
        found += [(f"spec.dataset.mixture.{i}.eval", entry.eval)]
    return [(path, src) for path, src in found if src is not None]


def _data_problems(spec: FineTuneJobSpec) -> list[str]:
    problems = []
    for path, src in _sources(spec):
        if src.uri is not None and not is_s3(src.uri):
            problems.append(
                f"{path}.uri: a file:// path is not in the pod; use s3://, pvc or configMap, "
                f"got {src.uri!r}"
            )
    if spec.model.source is not None and spec.model.source.config_map is not None:
        problems.append("spec.model.source.configMap: model weights do not fit a ConfigMap")
    return problems


def _resource_problems(spec: FineTuneJobSpec) -> list[str]:
    res = spec.resources
    problems = []
    extra = res.resources
    for kind in ("requests", "limits"):
        values = getattr(extra, kind) if extra is not None else None
        if values and GPU_RESOURCE in values:
            problems.append(
                f"spec.resources.resources.{kind}: set GPUs with spec.resources.gpusPerNode, "
                f"not {GPU_RESOURCE}"
            )
    problems += gpu_problems(spec.method, res.gpus_per_node)
    return problems


def _search_problems(spec: FineTuneJobSpec) -> list[str]:
    """spec.search: what `kubetune tune` would refuse (no eval data, values the schema refuses)."""
    if spec.search is None:
        return []
    from kubetune_api.search.space import check_search
    from kubetune_api.trainer_config import TrainerConfig

    config = TrainerConfig.from_spec(spec).model_copy(update={"search": spec.search})
    try:
        check_search(config)
    except ConfigError as err:
        return [f"spec.{p}" for p in err.problems]
    return []
