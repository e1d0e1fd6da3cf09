"""Per-request sampling: each row of a batch picks its next token with its own parameters.

`engine.py` calls `pick_next` once per decoding step. Temperature 0 is greedy (argmax); otherwise
softmax at the temperature, nucleus (top_p) filtering, and a draw from the request's own seeded
generator, so a row's tokens never depend on its batch mates. A row whose parameters or
probabilities are unusable raises (or, from `pick_next`, yields) a `SamplingError` for that row
alone (a 400 for its parameters; a 500 for logits that are not finite, greedy rows included);
its batch mates get their tokens. Knows nothing about text or stops.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

import torch


class SamplingError(Exception):
    """One request cannot be sampled; `status` says whose fault (400: its parameters)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SamplingParams:
    """How one request generates."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # keep generating after an end-of-sequence token (benchmarks)

    @property
    def greedy(self) -> bool:
        """Temperature 0 means argmax."""
        return self.temperature <= 0.0


@dataclass
class RowSampler:
    """A request's sampling state: its parameters and random generator."""

    params: SamplingParams
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        t, top_p = self.params.temperature, self.params.top_p
        if not math.isfinite(t) or t < 0:
            raise SamplingError(f"temperature must be a finite number >= 0, got {t!r}")
        if not 0 < top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {top_p!r}")
        self.generator = torch.Generator(device="cpu")
        seed = self.params.seed if self.params.seed is not None else secrets.randbits(63)
        try:
            self.generator.manual_seed(seed)
        except (RuntimeError, OverflowError, ValueError) as err:
            raise SamplingError(f"seed must fit in 64 bits, got {seed}") from err

    def pick(self, logits: torch.Tensor) -> int:
        """The next token id from one row of logits (fp32, on any device)."""
        logits = logits.float().cpu()
        if not bool(torch.isfinite(logits).all()):
            raise not_finite()
        if self.params.greedy:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits / self.params.temperature, dim=-1)
        if not bool(torch.isfinite(probs).all()):
            raise SamplingError(
                f"temperature {self.params.temperature!r} makes the probabilities not finite"
            )
        if self.params.top_p < 1.0:
            probs = top_p_filter(probs, self.params.top_p)
        return int(torch.multinomial(probs, 1, generator=self.generator).item())


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches `top_p`; renormalise."""
    sorted_probs, order = torch.sort(probs, descending=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs[before >= top_p] = 0.0
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum()


def not_finite() -> SamplingError:
    """Non-finite logits (e.g. a broken adapter's NaN weights): the server's failure, a 500."""
    return SamplingError("the model produced logits that are not finite", status=500)


def pick_next(logits: torch.Tensor, rows: list[RowSampler]) -> list[int | SamplingError]:
    """One token per row of `logits` (shape [rows, vocab]), or that row's `SamplingError`."""
    if all(r.params.greedy for r in rows):
        finite = torch.isfinite(logits).all(dim=-1)
        picks = torch.where(finite, torch.argmax(logits, dim=-1), -1).tolist()  # one transfer
        return [int(t) if t >= 0 else not_finite() for t in picks]
    return [_pick_one(row, logits[i]) for i, row in enumerate(rows)]


def _pick_one(row: RowSampler, logits: torch.Tensor) -> int | SamplingError:
    try:
        return row.pick(logits)
    except SamplingError as err:
        return err
    except RuntimeError as err:  # torch's own complaint (e.g. a zero-sum distribution)
        return SamplingError(f"sampling failed: {err}", status=500)
