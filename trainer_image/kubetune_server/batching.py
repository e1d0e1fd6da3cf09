"""Dynamic batching: collect concurrent requests for a few milliseconds, generate them together.

`app.py` starts one `Batcher` per app; routes `submit` a job and read its `Ticket` (text pieces,
then a finish event). A collector task takes the first waiting request, keeps collecting for
`wait_ms` or until `max_batch_size`, and hands the batch to a single worker thread, which runs
`Engine.generate`; adapter loads and unloads run on that thread too (`run_exclusive`), between
batches, and each row's adapter (its stable or canary folder) is looked up when its batch starts.
The waiting queue is bounded: `submit` raises `QueueFullError` (the route answers 429) instead of
growing without limit. Requests that arrive during a generation wait for the next batch. A client
that goes away cancels its ticket; its row stops at the next token.

Failures stay with the request that caused them: each ticket's sampler is built on its own (bad
parameters: that ticket alone gets a 400 error event and never joins the batch), a row whose
sampling fails or whose text stream raises ends alone, and a batch that fails before any token
(the prefill) is generated again one request at a time, so only the request that fails alone
sees the error. Only a failure in the middle of a batch's decoding reaches every row in it. A
ticket's `on_fail` (the route's counter for a named adapter's variant) hears its first failure's
status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from kubetune_server.engine import Engine, Finish, FinishReason, GenerationJob
from kubetune_server.metrics import ServerMetrics
from kubetune_server.multi_lora import BASE
from kubetune_server.sampling import RowSampler, SamplingError
from kubetune_server.text_stream import TextStream

log = logging.getLogger(__name__)

T = TypeVar("T")
PeftName = Callable[[str | None, bool], str | None]  # (adapter, canary) -> peft name (None: gone)
OnFail = Callable[[int], None]  # told the HTTP status of a ticket that failed, on the event loop


class QueueFullError(Exception):
    """The waiting queue is full; try again later."""


@dataclass(frozen=True)
class Event:
    """What a ticket receives: a text piece, the end, or an error (with its HTTP status)."""

    kind: Literal["text", "done", "error"]
    text: str = ""
    finish_reason: FinishReason | None = None
    status: int = 500
    code: str = "generation_failed"


@dataclass
class Ticket:
    """One submitted request: its job, its detokenizer and the events it receives."""

    job: GenerationJob
    stream: TextStream
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    token_ids: list[int] = field(default_factory=list)
    cancelled: bool = False
    failed: bool = False
    sampler: RowSampler | None = None
    route: str = BASE  # the peft adapter this row goes through, fixed when its batch starts
    on_fail: OnFail | None = None

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

    def fail(self, message: str, status: int = 500, code: str = "generation_failed") -> None:
        """End this request with an error event (its batch mates go on); `on_fail` hears of the
        first failure before the route reads the event."""
        if not self.failed and self.on_fail is not None:
            self.loop.call_soon_threadsafe(self.on_fail, status)
        self.failed = True
        text = message if message.endswith(".") else f"{message}."
        self.send(Event("error", text, status=status, code=code))


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
        peft_name: PeftName | None = None,
    ) -> None:
        self.engine = engine
        self.peft_name = peft_name
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

    async def run_exclusive(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the generation thread between batches (adapter loads and unloads)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def submit(self, job: GenerationJob, on_fail: OnFail | None = None) -> Ticket:
        """Queue `job`; raises `QueueFullError` when the queue is full."""
        stream = TextStream(self.engine.tokenizer, job.params.stop)
        ticket = Ticket(job, stream, asyncio.get_running_loop(), on_fail=on_fail)
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
        rows = [t for t in batch if _with_sampler(t) and self._with_route(t)]
        if not rows:
            return
        try:
            finishes = self._generate(rows)
        except Exception as err:
            log.exception("generation failed for a batch of %d", len(rows))
            for ticket in rows:
                ticket.fail(f"generation failed: {err}")
            return
        log.debug(
            "batch of %d done: %s",
            len(rows),
            [(f, t.completion_tokens, t.cancelled) for t, f in zip(rows, finishes, strict=True)],
        )
        for ticket, finish in zip(rows, finishes, strict=True):
            _deliver_end(ticket, finish)

    def _generate(self, rows: list[Ticket]) -> list[Finish]:
        """The batch's finishes; a batch that failed before any token is retried row by row."""
        try:
            return self._generate_together(rows)
        except Exception as err:
            if len(rows) == 1 or any(t.token_ids for t in rows):
                raise
            log.warning("a batch of %d failed (%s); generating each alone", len(rows), err)
        finishes: list[Finish] = []
        for ticket in rows:
            try:
                finishes += self._generate_together([ticket])
            except Exception as err:
                log.exception("generation failed for one request")
                ticket.fail(f"generation failed for this request: {err}")
                finishes.append("stop")
        return finishes

    def _with_route(self, ticket: Ticket) -> bool:
        """Fix the ticket's adapter for this batch; fail it alone if it was unloaded (False)."""
        adapter = ticket.job.adapter
        if adapter is None or self.peft_name is None:
            return True
        route = self.peft_name(adapter, ticket.job.canary)
        if route is None:
            ticket.fail(f"adapter {adapter!r} was unloaded", 404, "model_not_found")
            return False
        ticket.route = route
        return True

    def _generate_together(self, rows: list[Ticket]) -> list[Finish]:
        def emit(row: int, token: int) -> bool:
            ticket = rows[row]
            try:
                ticket.token_ids.append(token)
                piece = ticket.stream.push(token)
            except Exception as err:
                log.exception("detokenizing failed for one request")
                ticket.fail(f"generation failed for this request: {err}")
                return True
            if piece:
                ticket.send(Event("text", piece))
            return ticket.cancelled or ticket.stream.stopped

        samplers = [t.sampler for t in rows if t.sampler is not None]
        routes = [t.route for t in rows]
        return self.engine.generate([t.job for t in rows], emit, samplers, routes)


def _with_sampler(ticket: Ticket) -> bool:
    """Build the ticket's sampler; on bad parameters fail the ticket alone (False)."""
    try:
        ticket.sampler = RowSampler(ticket.job.params)
    except Exception as err:  # SamplingError, or anything else these parameters provoke
        status = err.status if isinstance(err, SamplingError) else 400
        ticket.fail(f"invalid sampling parameters: {err}", status, "invalid_sampling_params")
        return False
    return True


def _deliver_end(ticket: Ticket, finish: Finish) -> None:
    """The ticket's last events: the held-back text and `done`, or its own error."""
    if ticket.failed:
        return
    if isinstance(finish, SamplingError):
        code = "invalid_sampling_params" if finish.status < 500 else "generation_failed"
        ticket.fail(f"sampling failed for this request: {finish}", finish.status, code)
        return
    tail = ticket.stream.finish()
    if tail:
        ticket.send(Event("text", tail))
    ticket.send(Event("done", finish_reason=finish))
