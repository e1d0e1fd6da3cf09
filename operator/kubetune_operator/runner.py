"""The reconcile runner both kinds share: per-object lock, coalescing, debounce, requeue, threads.

A `Runner` calls its kind's `Sync` (`finetune.reconcile`, `serving.reconcile`) for one object
key at a time. Per key, runs are serialised by a lock and coalesced: while one runs, any number
of further triggers queue a single follow-up run, which reads fresh state. A `delay` lets a
burst of triggers share one run (debounce). An `Outcome`'s Events are posted on the object, and
its `requeue_after` (a deadline) schedules a run without any watch event. Blocking API calls go
through `call`, on a thread pool, so the kopf event loop never waits on the network. The freshest
body of each object (watch events and the answers to our own writes) waits in `bodies`.

`handle` is the handlers' entry: a failed API call becomes kopf's `TemporaryError` (kopf retries
the handler) or `PermanentError` (it will not get better), or only a warning where the next event
converges anyway. The runner does no I/O of its own: its kinds talk to the API through `kube`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from logging import Logger, LoggerAdapter
from typing import Any, Generic, TypeVar, cast

import kopf

from kubetune_operator.cache import BodyCache
from kubetune_operator.kube import KubeError
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.status import Event

Key = tuple[str, str]
Json = dict[str, Any]
C = TypeVar("C")  # what the handlers hand every run of one kind (FineTuneJob: its child indexes)
EventPoster = Callable[[Json, Event], None]
RETRY_DELAY = 5.0  # seconds before kopf calls a handler again after a temporary error
MIN_REQUEUE = 0.5  # seconds: a deadline run never fires sooner, and half a second after it
log = logging.getLogger("kubetune.operator")


@dataclass(frozen=True)
class Outcome:
    """What a run did: the object as it is now, the Events to post on it, the next deadline.

    `forget`: the object turned out to be gone; its lock, deadline and cached body are dropped.
    """

    body: Json | None
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None  # seconds until a deadline passes (pendingTimeoutSeconds)
    forget: bool = False


Sync = Callable[[Key, bool, C], Awaitable[Outcome | None]]  # (key, full, context); None: skip


def post_event(body: Json, event: Event) -> None:
    """A Kubernetes Event on the object (kopf batches and posts it)."""
    raw = cast(kopf.RawBody, body)
    kopf.event(kopf.Body(raw), type=event.type, reason=event.reason, message=event.message)


def kopf_error(
    err: KubeError, *, retry_every_error: bool = False
) -> kopf.TemporaryError | kopf.PermanentError:
    """kopf's kind of a failed reconcile: retry later (temporary), or give up on this change."""
    if err.temporary or retry_every_error:
        return kopf.TemporaryError(str(err), delay=RETRY_DELAY)
    return kopf.PermanentError(str(err))


@dataclass
class _KeyState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: bool = False
    full: bool = False
    timer: asyncio.TimerHandle | None = None


class Runner(Generic[C]):
    """Runs one kind's `Sync` per object key: serialised, coalesced, on a thread pool."""

    def __init__(
        self,
        kind: str,
        sync: Sync[C],
        post_event: EventPoster = post_event,
        *,
        workers: int = 8,
        metrics: OperatorMetrics | None = None,
        retry_every_error: bool = False,
    ) -> None:
        """`metrics`: time and count the runs (FineTuneJobs); `retry_every_error`: every failed
        API call is a TemporaryError, as the ModelDeployment handlers have always treated it."""
        self.kind, self.sync, self.post_event = kind, sync, post_event
        self.metrics, self.retry_every_error = metrics, retry_every_error
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix=kind.lower())
        self.keys: dict[Key, _KeyState] = {}
        self.bodies = BodyCache()

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """One blocking API call on the thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def observe(self, key: Key, body: Json, deleted: bool = False) -> None:
        """An object as the watch delivered it (or its deletion)."""
        if deleted:
            self.forget(key)
        else:
            self.bodies.offer(key, body)

    async def run(
        self,
        key: Key,
        context: C,
        *,
        full: bool = False,
        trigger: str = "event",
        delay: float = 0.0,
    ) -> None:
        """Reconcile one object now (after `delay`), or once more after the run in progress.

        A child's changes come in bursts (Job created, pod created, scheduled, running): a short
        `delay` lets one run see the whole burst instead of patching the status for each step.
        Raises the KubeError of a failed run; a trigger folded into another run returns at once.
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
            await self._run(key, context, full, trigger, state)

    async def handle(
        self,
        key: Key,
        context: C,
        *,
        full: bool = False,
        trigger: str = "event",
        delay: float = 0.0,
        logger: Logger | LoggerAdapter[Any] | None = None,
    ) -> None:
        """`run` for a kopf handler: a failed API call becomes kopf's TemporaryError or
        PermanentError; with a `logger`, only a warning (the next event or a resume converges)."""
        try:
            await self.run(key, context, full=full, trigger=trigger, delay=delay)
        except KubeError as err:
            if logger is None:
                raise kopf_error(err, retry_every_error=self.retry_every_error) from err
            logger.warning("reconcile of %s %s/%s (%s) failed: %s", self.kind, *key, trigger, err)

    async def _run(self, key: Key, context: C, full: bool, trigger: str, state: _KeyState) -> None:
        started = time.perf_counter()
        try:
            outcome = await self.sync(key, full, context)
        except KubeError as err:
            if self.metrics is not None:
                self.metrics.reconcile_errors.labels(err.reason or str(err.status)).inc()
            raise
        finally:
            if self.metrics is not None:
                elapsed = time.perf_counter() - started
                self.metrics.reconcile_seconds.labels(trigger).observe(elapsed)
        if outcome is None:
            return
        if outcome.forget:
            self.forget(key)
            return
        if outcome.body is not None:
            for event in outcome.events:
                self.post_event(outcome.body, event)
        self._requeue(key, context, outcome.requeue_after, state)

    def _requeue(self, key: Key, context: C, after: float | None, state: _KeyState) -> None:
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        if after is None:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            state.timer = None
            task = loop.create_task(self.run(key, context, trigger="deadline"))
            task.add_done_callback(self._log_failure)

        state.timer = loop.call_later(max(MIN_REQUEUE, after + MIN_REQUEUE), fire)

    def _log_failure(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("deadline reconcile of a %s failed: %s", self.kind, task.exception())

    def forget(self, key: Key) -> None:
        """The object is gone: drop its cached body, lock and pending deadline."""
        self.bodies.drop(key)
        state = self.keys.pop(key, None)
        if state is not None and state.timer is not None:
            state.timer.cancel()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
