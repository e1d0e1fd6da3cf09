"""`kubetune route calibrate`: pick the complexity threshold from our own eval data.

The RouteLLM idea without its trained router: score every eval request with `policy`, get both
backends' answers, measure quality against the target (token F1; exact match and agreement with
the large model are reported too), and for every candidate threshold compute the share of calls
that would go to the large model and the quality the mix would reach. The pick is the threshold
with the lowest large share whose quality stays within `target` (e.g. 0.95) of large-only.

`router_cli.py` calls `run_calibration`; the table math (`build_table`, `pick_threshold`) is pure
and unit-tested. Tokens for F1: CJK characters one by one, other text by words, lower-cased.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from kubetune_server.policy import score_request

NEVER_LARGE = 1.000001  # a threshold no score reaches: everything goes to the small model
_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]|[^\W_]+", re.UNICODE)


@dataclass(frozen=True)
class EvalRow:
    """One eval example: what the user asks and the reference answer."""

    input: str
    target: str


@dataclass(frozen=True)
class Scored:
    """One eval row with its complexity score and both backends' quality."""

    score: float
    large_f1: float
    small_f1: float
    large_exact: bool
    small_exact: bool
    agreement: float  # F1 of the small answer against the large answer


@dataclass(frozen=True)
class TableRow:
    """What routing at `threshold` would give on the eval set."""

    threshold: float
    share_large: float
    quality: float  # mean token F1 of the answers routing would return
    exact: float
    agreement: float  # mean F1 against what the large model would have said
    relative: float  # quality / large-only quality


def tokens(text: str) -> list[str]:
    """F1 tokens: CJK characters singly, other words whole, lower-cased."""
    return _TOKEN.findall(text.lower())


def token_f1(answer: str, reference: str) -> float:
    """SQuAD-style token F1 (1.0 when both are empty)."""
    a, r = tokens(answer), tokens(reference)
    if not a or not r:
        return float(a == r)
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def exact_match(answer: str, reference: str) -> bool:
    """Equal after whitespace and case normalisation."""
    return " ".join(tokens(answer)) == " ".join(tokens(reference))


def score_row(row: EvalRow, large: str, small: str) -> Scored:
    """A row's complexity score and both answers' quality."""
    body = {"messages": [{"role": "user", "content": row.input}]}
    return Scored(
        score=score_request(body),
        large_f1=token_f1(large, row.target),
        small_f1=token_f1(small, row.target),
        large_exact=exact_match(large, row.target),
        small_exact=exact_match(small, row.target),
        agreement=token_f1(small, large),
    )


def build_table(rows: Sequence[Scored]) -> list[TableRow]:
    """One line per candidate threshold: every distinct score, 0, and NEVER_LARGE."""
    if not rows:
        return []
    large_only = sum(r.large_f1 for r in rows) / len(rows)
    candidates = sorted({0.0, *(r.score for r in rows), NEVER_LARGE})
    table = []
    for t in candidates:
        to_large = [r.score >= t for r in rows]
        n = len(rows)
        quality = (
            sum(r.large_f1 if big else r.small_f1 for r, big in zip(rows, to_large, strict=True))
            / n
        )
        exact = (
            sum(
                r.large_exact if big else r.small_exact
                for r, big in zip(rows, to_large, strict=True)
            )
            / n
        )
        agree = sum(1.0 if big else r.agreement for r, big in zip(rows, to_large, strict=True)) / n
        relative = quality / large_only if large_only > 0 else 1.0
        table.append(TableRow(t, sum(to_large) / n, quality, exact, agree, relative))
    return table


def pick_threshold(table: Sequence[TableRow], target: float) -> TableRow:
    """The row with the lowest large share whose quality is within `target` of large-only."""
    good = [row for row in table if row.relative >= target - 1e-12]
    if not good:  # cannot happen (threshold 0 is large-only), kept for an empty table's sake
        raise ValueError("no threshold reaches the target quality")
    return min(good, key=lambda row: (row.share_large, -row.quality, row.threshold))


def format_table(table: Sequence[TableRow], picked: TableRow) -> str:
    """The table as aligned text, the picked row marked."""
    lines = ["threshold  share_large  quality(F1)  exact  agree_large  vs_large"]
    for row in table:
        mark = "  <- picked" if row == picked else ""
        shown = f"{row.threshold:9.3f}" if row.threshold <= 1 else "    never"
        lines.append(
            f"{shown}  {row.share_large:11.1%}  {row.quality:11.3f}  "
            f"{row.exact:5.2f}  {row.agreement:11.3f}  {row.relative:8.1%}{mark}"
        )
    return "\n".join(lines)


def read_eval(path: Path) -> list[EvalRow]:
    """input/target JSONL (blank lines skipped); a bad line raises naming file:line."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            rows.append(EvalRow(str(item["input"]), str(item["target"])))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(
                f"{path}:{number}: expected {{'input', 'target'}} JSON, {err}"
            ) from err
    return rows


async def ask(client: httpx.AsyncClient, url: str, text: str, max_tokens: int) -> str:
    """A greedy, non-streamed chat answer from the backend at `url`."""
    body = {
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    response = await client.post(url.rstrip("/") + "/v1/chat/completions", json=body)
    response.raise_for_status()
    return str(response.json()["choices"][0]["message"]["content"])


async def collect(
    rows: Sequence[EvalRow],
    large_url: str,
    small_url: str,
    *,
    max_tokens: int = 256,
    concurrency: int = 8,
    api_key: str | None = None,
) -> list[Scored]:
    """Ask both backends for every row (bounded concurrency) and score the answers."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600, headers=headers) as client:

        async def one(row: EvalRow) -> Scored:
            async with limit:
                large, small = await asyncio.gather(
                    ask(client, large_url, row.input, max_tokens),
                    ask(client, small_url, row.input, max_tokens),
                )
            return score_row(row, large, small)

        return list(await asyncio.gather(*(one(r) for r in rows)))


def run_calibration(
    eval_path: Path,
    large_url: str,
    small_url: str,
    *,
    target: float = 0.95,
    max_tokens: int = 256,
    api_key: str | None = None,
) -> tuple[list[TableRow], TableRow]:
    """Score the eval set against both backends; (table, picked row)."""
    rows = read_eval(eval_path)
    if not rows:
        raise ValueError(f"{eval_path} has no rows")
    scored = asyncio.run(
        collect(rows, large_url, small_url, max_tokens=max_tokens, api_key=api_key)
    )
    table = build_table(scored)
    return table, pick_threshold(table, target)
