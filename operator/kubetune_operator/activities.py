"""kopf's operator-wide handlers: its settings at startup, and how it logs in.

kopf keeps its progress and diff-base in `kubetune.io/*` annotations, out of the status, and
turns only its warnings into Events. Peering records (`--peering`) live `PEERING_LIFETIME`
seconds, so a standby replica takes over that soon after the active one dies.
Registered at import (kopf's default registry); imported
by `cli` beside `finetune.handlers` and `serving.handlers`.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kubetune_operator import names

KOPF_WORKERS = 8  # kopf's own handler threads; API calls run on each runner's thread pool
# Seconds a replica's peering record lives without a keep-alive (kopf refreshes it 5-10 s before
# it ends): a SIGKILLed active replica is replaced by the next one within this time.
PEERING_LIFETIME = 15


def configure(settings: kopf.OperatorSettings, workers: int = KOPF_WORKERS) -> None:
    """kopf's progress and diff-base in annotations; only its warnings become Events."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = workers
    settings.watching.server_timeout = 300
    settings.peering.lifetime = PEERING_LIFETIME


@kopf.on.startup(id="settings")
async def startup(*, settings: kopf.OperatorSettings, **_: Any) -> None:
    configure(settings)


@kopf.on.login(id="login")
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_via_client(**kwargs)  # in-cluster token, else KUBECONFIG
