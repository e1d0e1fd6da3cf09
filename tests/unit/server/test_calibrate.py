"""Threshold calibration math: token F1, the table and the pick."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_server.calibrate import (
    NEVER_LARGE,
    Scored,
    build_table,
    exact_match,
    format_table,
    pick_threshold,
    read_eval,
    token_f1,
)


def test_token_f1_counts_cjk_characters_and_words() -> None:
    assert token_f1("您可通过官网申请", "您可通过官网申请") == 1.0
    assert token_f1("", "") == 1.0 and token_f1("a", "") == 0.0
    assert token_f1("the fee is 0", "The fee is zero") == pytest.approx(0.75)
    assert 0 < token_f1("官网申请", "银行官网") < 1
    assert exact_match("No  annual FEE.", "no annual fee")


def row(score: float, large: float, small: float) -> Scored:
    return Scored(score, large, small, large == 1.0, small == 1.0, small)


def test_the_pick_is_the_cheapest_threshold_within_the_target() -> None:
    # easy rows: small is as good as large; hard rows: small is much worse.
    rows = [row(0.1, 1.0, 1.0), row(0.2, 1.0, 1.0), row(0.6, 1.0, 0.2), row(0.8, 1.0, 0.0)]
    table = build_table(rows)
    assert [t.threshold for t in table] == [0.0, 0.1, 0.2, 0.6, 0.8, NEVER_LARGE]
    assert table[0].share_large == 1.0 and table[0].relative == 1.0
    assert table[-1].share_large == 0.0 and table[-1].quality == pytest.approx(0.55)
    picked = pick_threshold(table, 0.95)
    assert picked.threshold == 0.6 and picked.share_large == 0.5 and picked.relative == 1.0
    assert pick_threshold(table, 0.5).threshold == NEVER_LARGE  # 0.55 >= 0.5: all small
    text = format_table(table, picked)
    assert "<- picked" in text and "never" in text


def test_read_eval_names_the_bad_line(tmp_path: Path) -> None:
    good = tmp_path / "eval.jsonl"
    good.write_text(json.dumps({"input": "q", "target": "a"}) + "\n\n", encoding="utf-8")
    assert len(read_eval(good)) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "q"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        read_eval(bad)
