"""The reconcile service: read the FineTuneJob, plan, apply children, patch status, post Events.

Handlers call `Reconciler.reconcile(key, ...)` for every trigger (spec change, a child Job or
pod changed, a deadline). Per FineTuneJob, runs are serialised by a lock and coalesced: while
one runs, any number of further triggers queue a single follow-up run, which reads fresh state.
Blocking API calls run on a thread pool so the kopf event loop never waits on the network.
The FineTuneJob itself comes from `BodyCache` (watch events and the answers to our own status
patches), so a reconcile GETs it only when it has not been seen yet.
`requeue_after` of a plan (a pending deadline) schedules a run without any watch event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubetune_operator.cache import BodyCache
from kubetune_operator.kube import Kube, KubeError
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.plan import Event, Observed, Plan, plan_reconcile
from kubetune_operator.settings import Settings
from kubetune_operator.status import status_patch

Key = tuple[str, str]
Json = dict[str, Any]
EventPoster = Callable[[Json, Event], None]
log = logging.getLogger("kubetune.operator")


@dataclass
class Indexes:
    """In-memory snapshots of children, keyed by (namespace, FineTuneJob name) (kopf indexes)."""

    jobs: Mapping[Key, Iterable[Json]]
    pods: Mapping[Key, Iterable[Json]]

    def observed(self, key: Key) -> Observed:
        return Observed(list(self.jobs.get(key, [])), list(self.pods.get(key, [])))


@dataclass
class _KeyState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: bool = False
    full: bool = False
    timer: asyncio.TimerHandle | None = None


class Reconciler:
    """Carries out plans against the API server, one FineTuneJob at a time."""

    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        metrics: OperatorMetrics,
        post_event: EventPoster,
        workers: int = 16,
    ) -> None:
        self.kube, self.settings, self.metrics = kube, settings, metrics
        self.post_event = post_event
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="reconcile")
        self.keys: dict[Key, _KeyState] = {}
        self.bodies = BodyCache()

    def observe(self, key: Key, body: Json, deleted: bool = False) -> None:
        """A FineTuneJob as the watch delivered it (or its deletion)."""
        if deleted:
            self.forget(key)
        else:
            self.bodies.offer(key, body)

    async def reconcile(
        self,
        key: Key,
        indexes: Indexes,
        *,
        full: bool = False,
        trigger: str = "event",
        delay: float = 0.0,
    ) -> None:
        """Reconcile one FineTuneJob now (after `delay`), or once more after the run in progress.

        A child's changes come in bursts (Job created, pod created, scheduled, running): a short
        `delay` lets one run see the whole burst instead of patching the status for each step.
        """
        state = self.keys.setdefault(key, _KeyState())
        state.full = state.full or full
        if state.queued:
            return
        state.queued = True
        if delay:
            await asyncio.sleep(delay)
        async with state.lock:
            state.queued, full, state.full = False, state.full, False
            await self._run(key, indexes, full, trigger, state)

    async def _run(
        self, key: Key, indexes: Indexes, full: bool, trigger: str, state: _KeyState
    ) -> None:
        started = time.perf_counter()
        try:
            done = await self._carry_out(key, indexes.observed(key), full)
        except KubeError as err:
            self.metrics.reconcile_errors.labels(err.reason or str(err.status)).inc()
            raise
        finally:
            self.metrics.reconcile_seconds.labels(trigger).observe(time.perf_counter() - started)
        if done is None:
            return
        body, plan = done
        for event in plan.events:
            self.post_event(body, event)
        self._requeue(key, indexes, plan, state, asyncio.get_running_loop())

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """One blocking API call on the thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _carry_out(
        self, key: Key, observed: Observed, full: bool
    ) -> tuple[Json, Plan] | None:
        """Read (cache first), plan, then write in two waves: everything the Job needs, in
        parallel; then the Job, deletions and the status patch, in parallel."""
        namespace, name = key
        body = self.bodies.get(key) or await self._call(self.kube.read_finetunejob, *key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        plan = plan_reconcile(body, observed, self.settings, datetime.now(UTC), full=full)
        first = [o for o in plan.apply if o["kind"] != "Job"]
        await asyncio.gather(*(self._call(self.kube.apply, o) for o in first))
        second = [self._call(self.kube.apply, o) for o in plan.apply if o["kind"] == "Job"]
        second += [self._call(self.kube.delete_job, namespace, job) for job in plan.delete_jobs]
        patch = status_patch(body.get("status"), plan.status, plan.status_keys)
        if patch:
            second.append(self._call(self.kube.patch_finetunejob_status, namespace, name, patch))
        answers = await asyncio.gather(*second)
        if patch:
            if answers[-1] is None:  # deleted meanwhile
                self.forget(key)
                return None
            body = answers[-1]
            self.bodies.offer(key, body)
        self.metrics.observe_phase(key, plan.status.phase)
        return body, plan

    def _requeue(
        self,
        key: Key,
        indexes: Indexes,
        plan: Plan,
        state: _KeyState,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        if plan.requeue_after is None:
            return
        delay = max(0.5, plan.requeue_after + 0.5)

        def fire() -> None:
            state.timer = None
            task = loop.create_task(self.reconcile(key, indexes, trigger="deadline"))
            task.add_done_callback(_log_failure)

        state.timer = loop.call_later(delay, fire)

    def forget(self, key: Key) -> None:
        """The FineTuneJob is gone: drop its lock and pending deadline."""
        self.bodies.drop(key)
        state = self.keys.pop(key, None)
        if state is not None and state.timer is not None:
            state.timer.cancel()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("deadline reconcile failed: %s", task.exception())
