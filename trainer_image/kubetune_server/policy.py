"""The routing policy, pure: a request's cheap features -> a complexity score in [0, 1] -> a backend.

`router_app.py` calls `decide` for every request (in a worker thread for large bodies) and
`calibrate.py` calls `complexity_score` for every eval row. Scoring is linear in the prompt's
length (64k characters in milliseconds), whatever the characters are. Nothing here does I/O,
reads a clock or holds state (the weighted strategy takes its random number as an argument), so
the same request always scores the same.

The score adds capped contributions (weights in `WEIGHTS`, each documented):
length of the prompt (estimated tokens: CJK characters count one each, other text four characters
per token), number of turns, code, math, reasoning cues in English and Chinese ("step by step",
"prove", "分析", "为什么" ...) and the requested `max_tokens`. A short FAQ question scores near 0;
"prove step by step that ..." with an equation scores above 0.5.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

WEIGHTS: dict[str, float] = {
    "length": 0.30,  # reached at LONG_PROMPT_TOKENS estimated prompt tokens
    "turns": 0.10,  # reached at MANY_TURNS user/assistant turns
    "code": 0.25,  # any code fence or code-like line
    "math": 0.20,  # any formula, equation or math vocabulary
    "reasoning": 0.35,  # REASONING_PER_CUE per distinct cue, up to this
    "max_tokens": 0.15,  # reached at LONG_ANSWER_TOKENS requested tokens
}
LONG_PROMPT_TOKENS = 1024
MANY_TURNS = 8
LONG_ANSWER_TOKENS = 2048
REASONING_PER_CUE = 0.15

REASONING_CUES: tuple[str, ...] = (
    "step by step",
    "step-by-step",
    "prove",
    "proof",
    "derive",
    "explain why",
    "why",
    "analyze",
    "analyse",
    "compare",
    "trade-off",
    "reason about",
    "in detail",
    "分析",
    "为什么",
    "证明",
    "推导",
    "比较",
    "逐步",
    "一步一步",
    "详细",
    "原因",
    "解释",
)
_CUE_PATTERNS = [
    re.compile(rf"\b{re.escape(c)}\b" if c.isascii() else re.escape(c), re.IGNORECASE)
    for c in REASONING_CUES
]
# Code: a fence, a line starting with a keyword, `=>`, `::`, a tag, or a call followed by `{`,
# `;` or `:` (`f(x) {`). Every part runs in linear time: a line's leading blanks cannot cross a
# newline (`^\s*` could, which made a run of newlines quadratic), and the call part is
# `_has_call`, not the regex `\w+\([^)]*\)\s*[{;:]`, which retried at every character of a
# long word (64k characters of `x`: 10 s).
_CODE = re.compile(
    r"```|^[^\S\n]*+(def|class|import|from \S+ import|function|public|#include|SELECT|for\s*\("
    r"|if\s*\()|=>|::|</?\w++>",
    re.IGNORECASE | re.MULTILINE,
)
_CALL_OPEN = re.compile(r"\b\w++\(")  # `name(`, found at the start of its word only
_AFTER_CALL = re.compile(r"\s*+[{;:]")
_MATH = re.compile(
    r"\$[^$]+\$|\\(frac|sum|int|sqrt|lim)|[∫∑√≤≥≠∞π]|\b\d+\s*[-+*/^=]\s*\d+|[a-z0-9)]\s*\^\s*[a-z0-9(]"
    r"|\b(equation|integral|derivative|matrix|probability|theorem|solve for|sqrt|irrational|prime|formula)\b"
    r"|方程|积分|导数|矩阵|概率|定理|求解|计算|公式",
    re.IGNORECASE,
)
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")


@dataclass(frozen=True)
class Features:
    """What the policy looks at."""

    prompt_tokens: int
    turns: int
    code: bool
    math: bool
    reasoning_cues: int
    max_tokens: int | None


@dataclass(frozen=True)
class Decision:
    """Where a request goes and why."""

    backend: str
    reason: str  # "complexity", "model", "weighted", "single" (the router adds "named-adapter")
    score: float | None = None


def estimate_tokens(text: str) -> int:
    """A cheap token count: one per CJK character, one per four other characters."""
    cjk = len(_CJK.findall(text))
    return cjk + (len(text) - cjk + 3) // 4


def request_texts(body: Mapping[str, Any]) -> tuple[list[str], int]:
    """(the text of every message or the prompt, number of user/assistant turns)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        texts = [_content_text(m.get("content")) for m in messages if isinstance(m, Mapping)]
        turns = sum(
            1 for m in messages if isinstance(m, Mapping) and m.get("role") in ("user", "assistant")
        )
        return texts, turns
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return [p for p in prompt if isinstance(p, str)], 1
    return ([prompt] if isinstance(prompt, str) else []), 1


def extract_features(body: Mapping[str, Any]) -> Features:
    """Features of an OpenAI chat or completion request body."""
    texts, turns = request_texts(body)
    text = "\n".join(texts)
    requested = body.get("max_completion_tokens") or body.get("max_tokens")
    return Features(
        prompt_tokens=estimate_tokens(text),
        turns=turns,
        code=bool(_CODE.search(text)) or _has_call(text),
        math=bool(_MATH.search(text)),
        reasoning_cues=_cue_count(text),
        max_tokens=requested if isinstance(requested, int) else None,
    )


def _cue_count(text: str) -> int:
    """Distinct reasoning cues in `text`; ASCII text skips the cues it cannot contain."""
    lowered = text.lower() if text.isascii() else None  # exact for ASCII, like IGNORECASE
    return sum(
        1
        for cue, pattern in zip(REASONING_CUES, _CUE_PATTERNS, strict=True)
        if (lowered is None or cue in lowered) and pattern.search(text)
    )


def _has_call(text: str) -> bool:
    """Whether `name(...)` is followed by `{`, `;` or `:` (no `)` inside), in linear time.

    Each `name(` pairs with the first `)` after it; `name(`s sharing that `)` are decided
    together, so every character is looked at a bounded number of times.
    """
    close = -1
    for opening in _CALL_OPEN.finditer(text):
        if opening.end() <= close:
            continue  # this `)` was already checked
        close = text.find(")", opening.end())
        if close < 0:
            return False
        if _AFTER_CALL.match(text, close + 1):
            return True
    return False


def complexity_score(features: Features) -> float:
    """The features' weighted, capped sum, in [0, 1]."""
    w = WEIGHTS
    score = w["length"] * min(1.0, features.prompt_tokens / LONG_PROMPT_TOKENS)
    score += w["turns"] * min(1.0, max(0, features.turns - 1) / (MANY_TURNS - 1))
    score += w["code"] * features.code + w["math"] * features.math
    score += min(w["reasoning"], REASONING_PER_CUE * features.reasoning_cues)
    if features.max_tokens:
        score += w["max_tokens"] * min(1.0, features.max_tokens / LONG_ANSWER_TOKENS)
    return round(min(1.0, max(0.0, score)), 6)


def score_request(body: Mapping[str, Any]) -> float:
    """`complexity_score` of a request body."""
    return complexity_score(extract_features(body))


def decide(
    body: Mapping[str, Any],
    *,
    backends: Sequence[str],
    strategy: str,
    threshold: float,
    large: str,
    small: str,
    default: str | None = None,
    weights: Mapping[str, float] | None = None,
    draw: float = 0.0,
) -> Decision:
    """The backend for `body`. A `model` naming a backend wins; then the strategy.

    `draw` is a uniform number in [0, 1) for the weighted strategy (the caller owns randomness).
    """
    named = body.get("model")
    if isinstance(named, str) and named in backends:
        return Decision(named, "model")
    if strategy == "single" or len(backends) == 1:
        return Decision(default or backends[0], "single")
    if strategy == "weighted":
        return Decision(_weighted(backends, weights or {}, draw), "weighted")
    score = score_request(body)
    return Decision(large if score >= threshold else small, "complexity", score)


def _weighted(backends: Sequence[str], weights: Mapping[str, float], draw: float) -> str:
    shares = [max(0.0, weights.get(b, 1.0)) for b in backends]
    total = sum(shares) or 1.0
    edge = 0.0
    for backend, share in zip(backends, shares, strict=True):
        edge += share / total
        if draw < edge:
            return backend
    return backends[-1]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return ""
