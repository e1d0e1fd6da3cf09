"""Dynamic batching: collect concurrent requests for a few milliseconds, generate them together.

`app.py` starts one `Batcher` per app; routes `submit` a job and read its `Ticket` (text pieces,
then a finish event). A collector task takes the first waiting request, keeps collecting for
`wait_ms` or until `max_batch_size`, and hands the batch to a single worker thread, which runs
`Engine.generate`. The waiting queue is bounded: `submit` raises `QueueFullError` (the route
answers 429) instead of growing without limit. Requests that arrive during a generation wait
for the next batch. A client that goes away cancels its ticket; its row stops at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from kubetune_server.engine import Engine, FinishReason, GenerationJob
from kubetune_server.metrics import ServerMetrics
from kubetune_server.text_stream import TextStream

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The waiting queue is full; try again later."""


@dataclass(frozen=True)
class Event:
    """What a ticket receives: a text piece, the end, or an error."""

    kind: Literal["text", "done", "error"]
    text: str = ""
    finish_reason: FinishReason | None = None


@dataclass
class Ticket:
    """One submitted request: its job, its detokenizer and the events it receives."""

    job: GenerationJob
    stream: TextStream
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    token_ids: list[int] = field(default_factory=list)
    cancelled: bool = False

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far."""
        return len(self.token_ids)

    @property
    def prompt_tokens(self) -> int:
        """Prompt length in tokens."""
        return len(self.job.prompt_ids)

    def send(self, event: Event) -> None:
        """Deliver `event` from any thread."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self) -> None:
        """Stop generating for this request (its client left)."""
        self.cancelled = True


class Batcher:
    """Owns the waiting queue, the collector task and the generation thread."""

    def __init__(
        self,
        engine: Engine,
        metrics: ServerMetrics,
        *,
        max_batch_size: int,
        max_queue: int,
        wait_ms: float,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.wait_s = wait_ms / 1000.0
        self._queue: asyncio.Queue[Ticket] = asyncio.Queue(maxsize=max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start collecting (call from the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._collect_forever())

    async def stop(self) -> None:
        """Stop collecting and let the running batch finish."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, job: GenerationJob) -> Ticket:
        """Queue `job`; raises `QueueFullError` when the queue is full."""
        ticket = Ticket(
            job, TextStream(self.engine.tokenizer, job.params.stop), asyncio.get_running_loop()
        )
        try:
            self._queue.put_nowait(ticket)
        except asyncio.QueueFull:
            self.metrics.rejected.inc()
            raise QueueFullError from None
        self.metrics.queue_depth.set(self._queue.qsize())
        return ticket

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self.metrics.queue_depth.set(self._queue.qsize())
            self.metrics.batch_size.observe(len(batch))
            await loop.run_in_executor(self._executor, self._run, batch)

    async def _collect(self) -> list[Ticket]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [t for t in batch if not t.cancelled]

    def _run(self, batch: list[Ticket]) -> None:
        """Generate `batch` (worker thread) and deliver every event."""
        if not batch:
            return

        def emit(row: int, token: int) -> bool:
            ticket = batch[row]
            ticket.token_ids.append(token)
            piece = ticket.stream.push(token)
            if piece:
                ticket.send(Event("text", piece))
            return ticket.cancelled or ticket.stream.stopped

        try:
            reasons = self.engine.generate([t.job for t in batch], emit)
        except Exception as err:
            log.exception("generation failed for a batch of %d", len(batch))
            for ticket in batch:
                ticket.send(Event("error", f"generation failed: {err}"))
            return
        log.debug(
            "batch of %d done: %s",
            len(batch),
            [(r, t.completion_tokens, t.cancelled) for t, r in zip(batch, reasons, strict=True)],
        )
        for ticket, reason in zip(batch, reasons, strict=True):
            tail = ticket.stream.finish()
            if tail:
                ticket.send(Event("text", tail))
            ticket.send(Event("done", finish_reason=reason))
