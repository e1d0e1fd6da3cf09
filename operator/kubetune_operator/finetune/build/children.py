"""Every child object of one attempt (or search trial), in the order they are applied. Pure.

RBAC and the ConfigMap go before the Job: a pod whose ServiceAccount does not exist yet is
refused, and the Job controller would back off. Called by `plan`, `attempts` and `search`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kubetune_api.finetune import FineTuneJobSpec
from kubetune_api.status import Attempt
from kubetune_operator import names
from kubetune_operator.finetune.build.config import Params, build_config_map
from kubetune_operator.finetune.build.job import build_job, build_service
from kubetune_operator.finetune.build.rbac import (
    build_role,
    build_role_binding,
    build_service_account,
)
from kubetune_operator.owner import Owner
from kubetune_operator.settings import Settings

Json = dict[str, Any]


def build_children(
    owner: Owner, spec: FineTuneJobSpec, attempt: Attempt, settings: Settings
) -> list[Json]:
    """Every child of one attempt, in apply order (RBAC and config before the Job)."""
    run = names.Run(attempt.index)
    config_map = build_config_map(owner, spec, run, attempt.changes)
    return _with_rbac(owner, spec, settings, config_map, run)


def build_trial_children(
    owner: Owner, spec: FineTuneJobSpec, trial: int, params: Params, settings: Settings
) -> list[Json]:
    """Every child of one search trial: the same RBAC, its own ConfigMap and Job."""
    run = names.Run(trial, trial=True)
    config_map = build_config_map(owner, spec, run, params=params)
    objects = _with_rbac(owner, spec, settings, config_map, run)
    job = objects[-1]
    job["metadata"]["annotations"][names.ANNOTATION_PARAMS] = json.dumps(params, sort_keys=True)
    return objects


def _with_rbac(
    owner: Owner, spec: FineTuneJobSpec, settings: Settings, config_map: Json, run: names.Run
) -> list[Json]:
    digest = hashlib.sha256(config_map["data"]["config.yaml"].encode()).hexdigest()[:16]
    objects = [build_service_account(owner), build_role(owner), build_role_binding(owner)]
    if spec.resources.nodes > 1:
        objects.append(build_service(owner, settings))
    objects.append(config_map)
    objects.append(build_job(owner, spec, run, settings, digest))
    return objects
