"""Failure isolation in the batcher and the samplers: one poisoned request never fails its batch.

The engine here is a stand-in that samples with the real `pick_next` from fixed logits (no model),
so sampler construction, per-row sampling errors, text-stream errors and a failing prefill are
all exercised through the real `Batcher`. The same with the real model: test_server.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from kubetune_server.batching import Batcher, Event, Ticket
from kubetune_server.engine import Finish, GenerationJob
from kubetune_server.metrics import ServerMetrics
from kubetune_server.sampling import RowSampler, SamplingError, SamplingParams, pick_next


class ByteTokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class SamplingEngine:
    """Each row samples bytes 'a'-'c' from the same logits with its own sampler."""

    def __init__(self, fail: Callable[[Sequence[GenerationJob]], bool] = lambda jobs: False):
        self.tokenizer = ByteTokenizer()
        self.fail = fail
        self.calls: list[int] = []

    def generate(
        self,
        jobs: Sequence[GenerationJob],
        emit: Callable[[int, int], bool],
        samplers: Any,
        adapters: Any = None,
    ) -> list[Finish]:
        self.calls.append(len(jobs))
        if self.fail(jobs):
            raise RuntimeError("out of memory")
        logits = torch.full((len(jobs), 128), -5.0)
        logits[:, 97:100] = torch.tensor([1.0, 2.0, 3.0])
        finish: list[Finish] = ["length"] * len(jobs)
        active = list(range(len(jobs)))
        for _ in range(max(j.params.max_new_tokens for j in jobs)):
            picks = pick_next(logits[active], [samplers[i] for i in active])
            still = []
            for row, token in zip(active, picks, strict=True):
                if isinstance(token, SamplingError):
                    finish[row] = token
                elif emit(row, token):
                    finish[row] = "stop"
                else:
                    still.append(row)
            active = still
        return finish


def job(prompt: str = "p", **params: Any) -> GenerationJob:
    return GenerationJob(list(prompt.encode()), SamplingParams(max_new_tokens=4, **params))


def run_batch(engine: SamplingEngine, jobs: list[GenerationJob]) -> list[list[Event]]:
    """Submit every job at once (one batch), return each ticket's events."""

    async def main() -> list[list[Event]]:
        batcher = Batcher(engine, ServerMetrics(), max_batch_size=8, max_queue=8, wait_ms=50)
        tickets = [batcher.submit(j) for j in jobs]
        batcher.start()
        try:
            return await asyncio.wait_for(asyncio.gather(*(events(t) for t in tickets)), 30)
        finally:
            await batcher.stop()

    return asyncio.run(main())


async def events(ticket: Ticket) -> list[Event]:
    seen: list[Event] = []
    while not seen or seen[-1].kind == "text":
        seen.append(await ticket.events.get())
    return seen


def text(seen: list[Event]) -> str:
    assert seen[-1].kind == "done", seen
    return "".join(e.text for e in seen)


GOOD = [job(), job(temperature=0.7, seed=1), job(temperature=1.0, top_p=0.5, seed=2)]


def test_a_seed_past_64_bits_fails_its_request_alone() -> None:
    engine = SamplingEngine()
    alone = [text(run_batch(engine, [j])[0]) for j in GOOD]
    *good, poisoned = run_batch(engine, [*GOOD, job(seed=2**70)])
    assert [text(g) for g in good] == alone
    assert poisoned[-1].kind == "error" and poisoned[-1].status == 400
    assert poisoned[-1].code == "invalid_sampling_params"
    assert poisoned[-1].text == (
        "invalid sampling parameters: seed must fit in 64 bits, got 1180591620717411303424."
    )
    assert engine.calls[-1] == 3  # it never joined the batch


def test_a_temperature_that_overflows_fails_at_sampling_alone() -> None:
    engine = SamplingEngine()
    alone = [text(run_batch(engine, [j])[0]) for j in GOOD]
    *good, poisoned = run_batch(engine, [*GOOD, job(temperature=1e-45, seed=3)])
    assert [text(g) for g in good] == alone
    assert engine.calls[-1] == 4  # it was generated with them, and failed by itself
    assert (poisoned[-1].kind, poisoned[-1].status) == ("error", 400)
    assert "temperature 1e-45 makes the probabilities not finite" in poisoned[-1].text


def test_a_failing_text_stream_fails_its_request_alone() -> None:
    engine = SamplingEngine()

    class Exploding:
        stopped = False

        def push(self, token: int) -> str:
            raise UnicodeError("cannot decode")

    async def main() -> list[list[Event]]:
        batcher = Batcher(engine, ServerMetrics(), max_batch_size=8, max_queue=8, wait_ms=50)
        tickets = [batcher.submit(j) for j in GOOD]
        tickets[1].stream = Exploding()  # type: ignore[assignment]
        batcher.start()
        try:
            return await asyncio.wait_for(asyncio.gather(*(events(t) for t in tickets)), 30)
        finally:
            await batcher.stop()

    first, broken, third = asyncio.run(main())
    assert len(text(first)) == len(text(third)) == 4
    assert broken[-1].kind == "error" and "cannot decode" in broken[-1].text


def test_a_batch_failing_at_prefill_is_retried_one_request_at_a_time() -> None:
    engine = SamplingEngine(fail=lambda jobs: len(jobs) > 1 or jobs[0].prompt_ids == [ord("!")])
    results = run_batch(engine, [*GOOD, job("!")])
    assert engine.calls == [4, 1, 1, 1, 1]
    assert [len(text(r)) for r in results[:3]] == [4, 4, 4]
    assert results[3][-1].kind == "error" and results[3][-1].status == 500
    assert "generation failed for this request: out of memory" in results[3][-1].text


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"seed": 2**64}, "seed must fit in 64 bits"),
        ({"seed": -(2**63) - 1}, "seed must fit in 64 bits"),
        ({"temperature": float("nan")}, "temperature must be a finite number"),
        ({"temperature": -1.0}, "temperature must be a finite number"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
    ],
)
def test_row_sampler_refuses_what_torch_would_choke_on(
    params: dict[str, Any], message: str
) -> None:
    with pytest.raises(SamplingError, match=message.replace("(", r"\(").replace("]", r"\]")):
        RowSampler(SamplingParams(max_new_tokens=1, **params))
    RowSampler(SamplingParams(max_new_tokens=1, seed=2**64 - 1))
    RowSampler(SamplingParams(max_new_tokens=1, seed=-(2**63)))


def test_pick_next_fails_only_the_row_that_cannot_sample() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0]] * 3)
    rows = [
        RowSampler(SamplingParams(max_new_tokens=1)),
        RowSampler(SamplingParams(max_new_tokens=1, temperature=1e-45, seed=1)),
        RowSampler(SamplingParams(max_new_tokens=1, temperature=0.5, seed=1)),
    ]
    first, failed, third = pick_next(logits, rows)
    assert first == 1 and isinstance(third, int) and isinstance(failed, SamplingError)
    assert failed.status == 400
    logits[2, 0] = float("nan")
    assert pick_next(logits, rows)[2].status == 500  # type: ignore[union-attr]


def test_a_greedy_row_with_logits_that_are_not_finite_fails_alone_with_500() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0], [float("nan")] * 3, [0.0, 1.0, float("inf")]])
    rows = [RowSampler(SamplingParams(max_new_tokens=1)) for _ in range(3)]
    first, *failed = pick_next(logits, rows)
    assert first == 1
    assert [(type(f), getattr(f, "status", None)) for f in failed] == [(SamplingError, 500)] * 2
    with pytest.raises(SamplingError, match="not finite"):
        rows[1].pick(logits[1])
