"""The FineTuneJob's runner wiring: read the job, plan, write the plan through `kube`.

`FineTuneJobs.sync` is the `Sync` that `runner.Runner` calls for every trigger (spec change, a
child Job or pod changed, a deadline), serialised and coalesced per FineTuneJob. The FineTuneJob
comes from the runner's body cache (watch events and the answers to our own status patches), so
a run GETs it only when it has not been seen yet; its children come from kopf's indexes
(`Indexes`). Built by `cli`; the handlers reach it through `finetune.handlers.PARTS`.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from kubetune_operator.finetune.plan import Plan, plan_reconcile
from kubetune_operator.finetune.plan_types import Indexes
from kubetune_operator.kube import Kube
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.runner import EventPoster, Outcome, Runner, post_event
from kubetune_operator.settings import Settings
from kubetune_operator.status import status_patch

Key = tuple[str, str]
Json = dict[str, Any]


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
        answer = await self.write(key, body, plan)
        if answer is None:  # deleted meanwhile
            return Outcome(None, forget=True)
        self.runner.bodies.offer(key, answer)
        self.metrics.observe_phase(key, plan.status.phase)
        return Outcome(answer, plan.events, plan.requeue_after)

    async def write(self, key: Key, body: Json, plan: Plan) -> Json | None:
        """Everything the Job needs, in parallel; then the Job, deletions and the status patch,
        in parallel. The body after the patch (`body` when nothing changed), None when gone."""
        namespace, name = key
        call = self.runner.call
        first = [o for o in plan.apply if o["kind"] != "Job"]
        await asyncio.gather(*(call(self.kube.apply, o) for o in first))
        second = [call(self.kube.apply, o) for o in plan.apply if o["kind"] == "Job"]
        second += [call(self.kube.delete_job, namespace, job) for job in plan.delete_jobs]
        patch = status_patch(body.get("status"), plan.status, plan.status_keys)
        if patch:
            second.append(call(self.kube.patch_finetunejob_status, namespace, name, patch))
        answers = await asyncio.gather(*second)
        return answers[-1] if patch else body
