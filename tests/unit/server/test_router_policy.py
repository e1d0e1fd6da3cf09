"""The routing policy: features, the complexity score and the decision (pure functions)."""

from __future__ import annotations

import random
import re
import time
from typing import Any

import pytest

from kubetune_server.policy import (
    WEIGHTS,
    Features,
    complexity_score,
    decide,
    estimate_tokens,
    extract_features,
    score_request,
)

BACKENDS = ["large", "small"]


def chat(*contents: str, **fields: Any) -> dict[str, Any]:
    roles = ["user", "assistant"]
    messages = [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]
    return {"messages": messages, **fields}


def route(body: dict[str, Any], threshold: float = 0.5, **kw: Any) -> str:
    kw = {"strategy": "complexity", "large": "large", "small": "small", **kw}
    return decide(body, backends=BACKENDS, threshold=threshold, **kw).backend


@pytest.mark.parametrize(
    "question",
    ["如何申请信用卡？", "What is the annual fee?", "信用卡丢了怎么办？", "hi"],
)
def test_simple_faq_questions_score_low_and_go_small(question: str) -> None:
    assert score_request(chat(question)) < 0.1
    assert route(chat(question)) == "small"


@pytest.mark.parametrize(
    "question",
    [
        "Prove step by step that sqrt(2) is irrational.",
        "请分析一下分期付款和最低还款哪个更划算，并逐步计算利息：本金10000元，年利率18%。",
        "Explain why this is slow and fix it:\n```python\nfor i in range(n):\n    s += a[i]\n```",
        "为什么复利会让负债增长这么快？请推导公式 A = P(1+r)^n 并比较两种还款方式。",
    ],
)
def test_reasoning_code_and_math_requests_score_high_and_go_large(question: str) -> None:
    assert score_request(chat(question)) >= 0.5
    assert route(chat(question)) == "large"


def test_each_cue_family_is_detected() -> None:
    assert extract_features(chat("def f(x):\n    return x")).code
    assert extract_features(chat("solve the equation 3x + 2 = 11")).math
    assert extract_features(chat("求解方程")).math
    assert extract_features(chat("为什么")).reasoning_cues == 1
    assert extract_features(chat("please think step by step")).reasoning_cues == 1
    assert extract_features(chat("a plain sentence")) == Features(4, 1, False, False, 0, None)


def test_score_grows_with_length_turns_and_max_tokens() -> None:
    short, long = chat("tell me about cards"), chat("tell me about cards " * 200)
    assert score_request(long) > score_request(short)
    assert score_request(chat(*["ok"] * 8)) > score_request(chat("ok"))
    assert score_request(chat("x", max_tokens=4096)) > score_request(chat("x", max_tokens=16))
    assert score_request(chat("x", max_completion_tokens=4096)) == score_request(
        chat("x", max_tokens=4096)
    )


def test_score_stays_in_unit_interval_at_the_extremes() -> None:
    everything = chat(
        *(["Prove step by step why ```def f(): pass``` computes ∫ x^2 dx; 分析 为什么 证明"] * 50),
        max_tokens=100_000,
    )
    assert score_request(everything) == 1.0
    assert sum(WEIGHTS.values()) >= 1.0  # so the cap is reachable
    assert score_request({}) == 0.0
    assert score_request({"messages": "not a list", "prompt": 3}) == 0.0


def test_completions_prompts_and_multipart_content_are_read() -> None:
    assert score_request({"prompt": "Prove step by step that 2+2=4"}) >= 0.5
    assert score_request({"prompt": ["Prove step by step that 2+2=4"]}) >= 0.5
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "prove it"}]}]}
    assert extract_features(parts).reasoning_cues == 1


def test_the_threshold_is_inclusive_and_the_score_is_deterministic() -> None:
    body = chat("Prove step by step that sqrt(2) is irrational.")
    score = score_request(body)
    assert route(body, threshold=score) == "large"
    assert route(body, threshold=min(1.0, score + 1e-6)) == "small"
    assert all(score_request(body) == score for _ in range(5))


def test_a_request_naming_a_backend_goes_there() -> None:
    hard = chat("Prove step by step that sqrt(2) is irrational.")
    decision = decide({**hard, "model": "small"}, backends=BACKENDS, strategy="complexity",
                      threshold=0.5, large="large", small="small")  # fmt: skip
    assert (decision.backend, decision.reason, decision.score) == ("small", "model", None)
    assert route({**chat("hi"), "model": "large"}) == "large"
    assert route({**chat("hi"), "model": "qwen3-8b"}) == "small"  # unknown names are ignored


def test_single_and_weighted_strategies() -> None:
    body = chat("Prove step by step that sqrt(2) is irrational.")
    assert route(body, strategy="single", default="small") == "small"
    weights = {"large": 1.0, "small": 3.0}
    picks = [route(body, strategy="weighted", weights=weights, draw=d / 100) for d in range(100)]
    assert picks.count("large") == 25 and picks.count("small") == 75
    assert route(body, strategy="weighted", weights={"large": 0, "small": 0}, draw=0.99) == "small"


def test_token_estimate_counts_cjk_characters_singly() -> None:
    assert estimate_tokens("信用卡") == 3
    assert estimate_tokens("abcdefgh") == 2
    assert estimate_tokens("") == 0


def test_complexity_score_of_features_directly() -> None:
    none = Features(0, 1, False, False, 0, None)
    assert complexity_score(none) == 0.0
    assert complexity_score(Features(0, 1, True, False, 0, None)) == WEIGHTS["code"]
    assert complexity_score(Features(0, 1, False, False, 10, None)) == WEIGHTS["reasoning"]


# The code detector before issue 15: quadratic on a long word (64k characters of `x`: 10 s,
# 64k newlines: minutes). Kept here to prove the linear one decides the same.
QUADRATIC_CODE = re.compile(
    r"```|^\s*(def|class|import|from \S+ import|function|public|#include|SELECT|for\s*\(|if\s*\()"
    r"|\w+\([^)]*\)\s*[{;:]|=>|::|</?\w+>",
    re.IGNORECASE | re.MULTILINE,
)
PIECES = ["x", "a1", " ", "\n", "\t", "\r", "\x0b", "(", ")", "{", ";", ":", "=", ">", "<", "/",
          "`", "def", "from ", " import", "for", "if", "select", "#include", "é", "信", "\u2028"]  # fmt: skip


def test_code_detection_decides_as_the_quadratic_regex_did() -> None:
    rng = random.Random(15)
    for _ in range(30_000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 12)))
        expected = bool(QUADRATIC_CODE.search(text))
        assert extract_features({"prompt": text}).code == expected, repr(text)


def test_reasoning_cues_count_as_one_regex_per_cue_did() -> None:
    from kubetune_server.policy import _CUE_PATTERNS

    rng = random.Random(16)
    pieces = ["Why", "STEP", " by ", "step", "-", "prove", "n", " ", "Trade-Off", "分析", "é", "x"]
    for _ in range(5_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        expected = sum(1 for p in _CUE_PATTERNS if p.search(text))
        assert extract_features({"prompt": text}).reasoning_cues == expected, repr(text)


@pytest.mark.parametrize(
    "text",
    ["x" * 65_536, "\n" * 65_536, "a(" * 32_768, "<" + "x" * 65_535, "from x\n" * 9_362,
     "Prove why 信用卡 " * 4_096, "f" + "(" * 65_535],
    ids=["x", "newlines", "a(", "<x", "from-lines", "mixed", "f((("],
)  # fmt: skip
def test_a_64k_character_prompt_scores_in_linear_time(text: str) -> None:
    start = time.perf_counter()
    score_request({"prompt": text})
    # ~10-30 ms on an idle core (bench/serve_abuse.py prints it); the bound leaves room for a
    # loaded machine and still fails the quadratic regex by two orders of magnitude.
    assert time.perf_counter() - start < 1.0


def test_a_named_adapter_goes_to_its_backend_only_whatever_the_score() -> None:
    import json

    from kubetune_server.metrics import RouterMetrics
    from kubetune_server.router_app import _Router
    from kubetune_server.schemas import ChatCompletionRequest
    from kubetune_server.settings import RouterSettings

    settings = RouterSettings(
        backends={"large": "http://l", "small": "http://s"}, adapter_backends={"faq": "small"}
    )
    router = _Router(settings, RouterMetrics(), None)  # type: ignore[arg-type]  # no forwarding
    hard = chat("def f(x):\n    return x\n" * 200, model="faq")
    decision = router.decide(json.dumps(hard).encode(), ChatCompletionRequest)
    assert (decision.backend, decision.reason) == ("small", "named-adapter")
    assert router.order("small", alone=True) == ["small"]
    assert router.order("small") == ["small", "large"]
    plain = router.decide(json.dumps({**hard, "model": "other"}).encode(), ChatCompletionRequest)
    assert plain.reason == "complexity"
