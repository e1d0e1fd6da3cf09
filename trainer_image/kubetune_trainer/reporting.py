"""Reporters chosen by the environment, so the same command line works locally and in a pod.

When the operator launches the trainer it sets KUBETUNE_FINETUNEJOB=<namespace>/<name>; then
the status reporter (which patches that FineTuneJob's status) is added. Called by the CLI.
"""

from __future__ import annotations

import os

from kubetune_trainer.progress import Reporter


def extra_reporters() -> list[Reporter]:
    target = os.environ.get("KUBETUNE_FINETUNEJOB")
    if not target:
        return []
    from kubetune_trainer.kube_status import KubeStatusReporter

    namespace, _, name = target.partition("/")
    return [KubeStatusReporter(namespace=namespace, name=name)]
