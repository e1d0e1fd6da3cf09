"""The FineTuneJob's runner wiring: read the job, plan, write the plan through `kube`.

`FineTuneJobs.sync` is the `Sync` that `runner.Runner` calls for every trigger (spec change, a
child Job or pod changed, a deadline), serialised and coalesced per FineTuneJob. The FineTuneJob
comes from the runner's body cache (watch events and the answers to our own status patches), so
a run GETs it only when it has not been seen yet; its children come from kopf's indexes
(`Indexes`). An object the API server refuses (400/422: a toleration or quantity the schema
let through) fails the FineTuneJob as Rejected with the API server's message
(`attempts.rejected`), never a silent Pending. Built by `cli`; the handlers reach it through
`finetune.handlers.PARTS`. The test-only `crash` hooks sit between the writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

from kubetune_operator.crash import crash_point
from kubetune_operator.finetune.attempts import rejected
from kubetune_operator.finetune.plan import Plan, plan_reconcile
from kubetune_operator.finetune.plan_types import Indexes
from kubetune_operator.kube import Kube, KubeError
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.runner import EventPoster, Outcome, Runner, post_event
from kubetune_operator.settings import Settings
from kubetune_operator.status import status_patch

Key = tuple[str, str]
Json = dict[str, Any]


class Refused(Exception):
    """The API server refused `obj` itself (400/422): sending it again cannot help."""

    def __init__(self, obj: Json, error: KubeError) -> None:
        super().__init__(error.message)
        self.obj, self.error = obj, error


class FineTuneJobs:
    """Plans FineTuneJobs and carries the plans out; `runner` runs it per FineTuneJob."""

    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        metrics: OperatorMetrics,
        post: EventPoster = post_event,
        workers: int = 16,
    ) -> None:
        self.kube, self.settings, self.metrics = kube, settings, metrics
        self.runner: Runner[Indexes] = Runner(
            "FineTuneJob", self.sync, post, workers=workers, metrics=metrics
        )

    async def sync(self, key: Key, full: bool, indexes: Indexes) -> Outcome | None:
        """Read (cache first), plan, then write in two waves (`write`)."""
        body = self.runner.bodies.get(key) or await self.runner.call(
            self.kube.read_finetunejob, *key
        )
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        plan = plan_reconcile(
            body, indexes.observed(key), self.settings, datetime.now(UTC), full=full
        )
        try:
            answer = await self.write(key, body, plan)
        except Refused as refused:
            plan = rejected(plan, refused.obj, refused.error.message, datetime.now(UTC))
            answer = await self.write(key, body, plan)
        if answer is None:  # deleted meanwhile
            return Outcome(None, forget=True)
        self.runner.bodies.offer(key, answer)
        self.metrics.observe_phase(key, plan.status.phase)
        return Outcome(answer, plan.events, plan.requeue_after)

    async def apply(self, obj: Json) -> Json:
        """Server-side apply of one child; raises Refused when the API server refuses it."""
        try:
            answer: Json = await self.runner.call(self.kube.apply, obj)
        except KubeError as err:
            if err.rejected:
                raise Refused(obj, err) from None
            raise
        if obj["kind"] == "Job":
            crash_point("after-job-apply")
        return answer

    async def write(self, key: Key, body: Json, plan: Plan) -> Json | None:
        """Everything the Job needs, in parallel (RoleBindings after the Roles they name: the
        API server's escalation check reads the Role); then the Job, deletions and the status
        patch, in parallel. The body after the patch (`body` when nothing changed), None when gone."""
        namespace, name = key
        call = self.runner.call
        for wave in _waves(plan.apply):
            await _all(*(self.apply(o) for o in wave))
        jobs = [o for o in plan.apply if o["kind"] == "Job"]
        if jobs:
            crash_point("before-job-apply")
        second = [self.apply(o) for o in jobs]
        second += [call(self.kube.delete_job, namespace, job) for job in plan.delete_jobs]
        patch = status_patch(body.get("status"), plan.status, plan.status_keys)
        if patch:
            second.append(call(self.kube.patch_finetunejob_status, namespace, name, patch))
        answers = await _all(*second)
        if patch:
            crash_point("after-status-patch")
        return answers[-1] if patch else body


def _waves(objects: list[Json]) -> list[list[Json]]:
    """The children before the Job in two parallel waves: RoleBindings after the rest."""
    first = [o for o in objects if o["kind"] not in ("Job", "RoleBinding")]
    second = [o for o in objects if o["kind"] == "RoleBinding"]
    return [wave for wave in (first, second) if wave]


async def _all(*calls: Awaitable[Any]) -> list[Any]:
    """Every call's answer; when some failed, the first refusal (else the first error) is
    raised only after all have finished, so no write lands after the one that follows it."""
    answers = await asyncio.gather(*calls, return_exceptions=True)
    errors = [a for a in answers if isinstance(a, BaseException)]
    if errors:
        raise next((e for e in errors if isinstance(e, Refused)), errors[0])
    return answers
