"""Data augmentation: synonym matching (Chinese longest-match, English boundaries and case),
determinism, probability, the row budget, which texts change, and back-translation failure
counting (over an in-process httpx transport; the real-HTTP test is in tests/integration)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubetune_api.extras import AugmentationSpec
from kubetune_trainer.augment import (
    AUGMENTED_FROM_KEY,
    AUGMENTED_KEY,
    DictionaryError,
    SynonymTable,
    augment_file,
    augment_rows,
    load_synonyms,
)

SYNONYMS = {
    "信用": ["信誉"],
    "信用卡": ["贷记卡", "银行卡"],
    "申请": ["办理"],
    "card": ["bill"],
    "credit limit": ["credit line"],
    "how": ["in what way"],
}


def table(entries: dict[str, list[str]] | None = None) -> SynonymTable:
    return SynonymTable({k: tuple(v) for k, v in (entries or SYNONYMS).items()})


def replace_all(text: str, entries: dict[str, list[str]] | None = None) -> str:
    return table(entries).replace(text, 1.0, random.Random(0))[0]


@pytest.fixture
def dictionary(tmp_path: Path) -> Path:
    path = tmp_path / "synonyms.json"
    path.write_text(json.dumps(SYNONYMS, ensure_ascii=False), encoding="utf-8")
    return path


def spec(dictionary: Path, **kwargs: Any) -> AugmentationSpec:
    probability = kwargs.pop("probability", 1.0)
    return AugmentationSpec.model_validate(
        {"synonyms": {"dictionary": str(dictionary), "probability": probability}, **kwargs}
    )


def rows(n: int) -> list[dict[str, Any]]:
    return [
        {"input": f"如何申请信用卡 {i}?", "target": f"信用卡答案 {i}", "id": i} for i in range(n)
    ]


def test_chinese_longest_match_wins_over_its_prefix() -> None:
    assert table().matches("我的信用卡丢了，信用很好") == [(2, 5), (8, 10)]
    out = replace_all("我的信用卡丢了，信用很好", {"信用": ["信誉"], "信用卡": ["贷记卡"]})
    assert out == "我的贷记卡丢了，信誉很好"


def test_english_boundaries_and_case() -> None:
    assert replace_all("Card, CARD, card; discard cards") == "Bill, BILL, bill; discard cards"
    assert replace_all("My Credit Limit is low") == "My Credit Line is low"
    assert replace_all("How do I apply?") == "In what way do I apply?"


def test_mixed_script_text() -> None:
    assert replace_all("申请card的信用卡") == "办理bill的" + replace_all("信用卡")


def test_probability_zero_and_one() -> None:
    text = "card card card card 信用卡 申请"
    assert table().replace(text, 0.0, random.Random(1)) == (text, 0)
    out, n = table().replace(text, 1.0, random.Random(1))
    assert n == 6 and "card" not in out and "申请" not in out


def test_replacement_is_deterministic_per_seed(dictionary: Path) -> None:
    data = rows(40)
    first, _ = augment_rows(data, spec(dictionary, probability=0.5, seed=3), fmt="input-target")
    again, _ = augment_rows(data, spec(dictionary, probability=0.5, seed=3), fmt="input-target")
    other, _ = augment_rows(data, spec(dictionary, probability=0.5, seed=4), fmt="input-target")
    assert first == again
    assert first != other


def test_rows_are_marked_capped_and_sources_untouched(dictionary: Path) -> None:
    data = rows(10)
    before = json.dumps(data, ensure_ascii=False)
    added, stats = augment_rows(data, spec(dictionary, maxRows=3), fmt="input-target")
    assert json.dumps(data, ensure_ascii=False) == before
    assert len(added) == 3 == stats.synonym_rows == stats.added_rows
    assert stats.source_rows == stats.eligible_rows == 10
    for row in added:
        src = data[row[AUGMENTED_FROM_KEY]]
        assert row[AUGMENTED_KEY] == "synonyms"
        assert row["target"] == src["target"]  # answers are never rewritten
        assert row["input"] != src["input"] and "办理" in row["input"]
        assert row["id"] == src["id"]
    assert len({r[AUGMENTED_FROM_KEY] for r in added}) == 3


def test_max_rows_zero_adds_nothing(dictionary: Path) -> None:
    added, stats = augment_rows(rows(5), spec(dictionary, maxRows=0), fmt="input-target")
    assert added == [] and stats.added_rows == 0


def test_rows_without_a_match_are_not_added(dictionary: Path) -> None:
    data = [{"input": "nothing to swap", "target": "x"}, *rows(1)]
    added, stats = augment_rows(data, spec(dictionary), fmt="input-target")
    assert [r[AUGMENTED_FROM_KEY] for r in added] == [1]
    assert stats.unchanged_rows == 1


def test_messages_rewrite_user_turns_only(dictionary: Path) -> None:
    row = {
        "messages": [
            {"role": "system", "content": "信用卡 assistant"},
            {"role": "user", "content": "怎么申请信用卡"},
            {"role": "assistant", "content": "申请信用卡请到网点"},
            {"role": "user", "content": "card?"},
        ]
    }
    (new,), _ = augment_rows([row], spec(dictionary), fmt="messages")
    contents = [m["content"] for m in new["messages"]]
    assert contents[0] == "信用卡 assistant" and contents[2] == "申请信用卡请到网点"
    assert contents[1].startswith("怎么办理") and contents[3] == "bill?"


def test_text_format_and_invalid_rows(dictionary: Path) -> None:
    data: list[dict[str, Any]] = [{"text": "申请信用卡"}, {"text": 3}, {"input": "申请"}, {}]
    added, stats = augment_rows(data, spec(dictionary), fmt="text")
    assert stats.eligible_rows == 1 and len(added) == 1 and added[0]["text"].startswith("办理")
    _, stats = augment_rows(data, spec(dictionary), fmt="input-target")
    assert stats.eligible_rows == 0  # {"input"} without "target" is left to the loader


def test_tsv_dictionary_and_errors(tmp_path: Path) -> None:
    tsv = tmp_path / "syn.tsv"
    tsv.write_text("# comment\nCard\tbill, ticket\n申请\t办理，申办\n\n", encoding="utf-8")
    loaded = load_synonyms(tsv)
    assert loaded.entries == {"card": ("bill", "ticket"), "申请": ("办理", "申办")}
    tsv.write_text("card bill\n", encoding="utf-8")
    with pytest.raises(DictionaryError, match=r"syn.tsv:1: expected word<TAB>syn1,syn2"):
        load_synonyms(tsv)
    bad = tmp_path / "syn.json"
    bad.write_text('{"card": "bill"}', encoding="utf-8")
    with pytest.raises(DictionaryError, match=r"synonyms of 'card' must be a list"):
        load_synonyms(bad)
    with pytest.raises(DictionaryError, match="cannot read"):
        load_synonyms(tmp_path / "missing.json")


def fake_translator(fail_when: str = "FAIL") -> httpx.Client:
    """A chat/completions endpoint in-process: 'translates' by swapping 申请 <-> 办理 via a pivot."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        text = body["messages"][1]["content"]
        if fail_when in text:
            return httpx.Response(500, json={"error": "boom"})
        to_pivot = " to English" in body["messages"][0]["content"]
        out = "EN:" + text if to_pivot else text.removeprefix("EN:").replace("申请", "办理")
        return httpx.Response(200, json={"choices": [{"message": {"content": out}}]})

    return httpx.Client(transport=httpx.MockTransport(handler))


def bt_spec(**kwargs: Any) -> AugmentationSpec:
    return AugmentationSpec.model_validate(
        {"backTranslation": {"endpoint": "http://translator/v1"}, **kwargs}
    )


def test_back_translation_adds_counts_and_caps() -> None:
    data = rows(6)
    data[2]["input"] = "FAIL 申请"
    data[4]["input"] = "no change"
    added, stats = augment_rows(data, bt_spec(), fmt="input-target", client=fake_translator())
    assert sorted(r[AUGMENTED_FROM_KEY] for r in added) == [0, 1, 3, 5]
    assert all(r[AUGMENTED_KEY] == "back-translation" and "办理" in r["input"] for r in added)
    assert stats.back_translation_failures == 1 and stats.unchanged_rows == 1
    assert stats.failure_reasons == ["HTTP 500 from http://translator/v1/chat/completions"]
    capped, stats = augment_rows(
        data, bt_spec(maxRows=2), fmt="input-target", client=fake_translator()
    )
    assert len(capped) == 2 == stats.back_translation_rows


def test_back_translation_gives_up_on_a_dead_endpoint() -> None:
    added, stats = augment_rows(
        rows(50), bt_spec(), fmt="input-target", client=fake_translator(fail_when="")
    )
    assert added == [] and stats.back_translation_stopped
    assert stats.back_translation_failures < 50


def test_both_methods_share_the_budget(dictionary: Path) -> None:
    both = AugmentationSpec.model_validate(
        {
            "synonyms": {"dictionary": str(dictionary), "probability": 1.0},
            "backTranslation": {"endpoint": "http://translator/v1"},
            "maxRows": 5,
        }
    )
    added, stats = augment_rows(rows(10), both, fmt="input-target", client=fake_translator())
    assert (stats.synonym_rows, stats.back_translation_rows) == (2, 3)
    assert len(added) == 5


def test_augment_file_writes_only_new_rows(dictionary: Path, tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows(4)) + "\nnot json\n\n",
        encoding="utf-8",
    )
    out = tmp_path / "out" / "augmented.jsonl"
    stats = augment_file(train, spec(dictionary), fmt="input-target", out_path=out)
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert stats.source_rows == 4 and len(written) == 4 == stats.added_rows
    assert all(r[AUGMENTED_KEY] == "synonyms" for r in written)


def test_configuration_errors_name_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune_api import ConfigError

    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    bad = bt_spec(backTranslation={"endpoint": "http://x/v1", "apiKeyEnv": "NO_SUCH_KEY"})
    with pytest.raises(
        ConfigError, match=r"backTranslation\.apiKeyEnv: .*'NO_SUCH_KEY' is not set"
    ):
        augment_rows(rows(1), bad, fmt="input-target")
    with pytest.raises(ConfigError) as err:
        augment_rows(rows(1), spec(tmp_path / "none.json"), fmt="input-target")
    assert err.value.problems[0].startswith("dataset.augmentation.synonyms.dictionary: cannot read")
