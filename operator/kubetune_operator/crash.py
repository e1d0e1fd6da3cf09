"""Test-only crash hooks: `KUBETUNE_CRASH_AT=after-job-apply` kills the operator at that point.

A fault test (`bench/chaos.py`, tests/e2e/test_chaos.py) sets the variable to one or
more comma-separated points and the operator process ends with `os._exit(CRASH_EXIT)` (no
cleanup, as a SIGKILL would) the moment a reconcile reaches one of them:

    before-job-apply     the attempt's RBAC and ConfigMap are applied, its Job is not
    after-job-apply      the Job was just created; the status patch beside it may not be sent
    after-status-patch   the Job and the status are written, the Events are not posted

Unset (always, outside fault tests), `crash_point` is one dictionary lookup. Read here and
nowhere else; called by `finetune.reconcile`.
"""

from __future__ import annotations

import os

ENV = "KUBETUNE_CRASH_AT"
CRASH_EXIT = 86  # so a test can tell a hook's exit from any other
POINTS = ("before-job-apply", "after-job-apply", "after-status-patch")


def crash_point(point: str) -> None:
    """End the process at once when KUBETUNE_CRASH_AT names `point`."""
    wanted = os.environ.get(ENV)
    if wanted and point in wanted.split(","):
        os._exit(CRASH_EXIT)
