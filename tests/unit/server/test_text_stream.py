"""Incremental detokenization: whole characters only, stop sequences cut off and held back."""

from __future__ import annotations

from kubetune_server.text_stream import TextStream


class ByteTokenizer:
    """Token id i is the byte i; decoding replaces incomplete UTF-8, as byte-level BPE does."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def feed(text: str, stops: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:
    stream = TextStream(ByteTokenizer(), stops)
    pieces = [stream.push(b) for b in text.encode("utf-8")]
    pieces.append(stream.finish())
    return [p for p in pieces if p], stream


def test_multibyte_characters_are_released_whole() -> None:
    pieces, stream = feed("信用卡ok")
    assert pieces == ["信", "用", "卡", "o", "k"]
    assert stream.text == "信用卡ok" and not stream.stopped


def test_a_stop_sequence_ends_the_text_before_it() -> None:
    pieces, stream = feed("Answer: 42\nUser: next", stops=("\nUser:",))
    assert "".join(pieces) == "Answer: 42"
    assert stream.stopped and stream.text == "Answer: 42"
    assert stream.push(ord("x")) == ""  # nothing after a stop


def test_a_possible_stop_prefix_is_held_back_then_released() -> None:
    stream = TextStream(ByteTokenizer(), ("END",))
    released = [stream.push(b) for b in b"abEN"]
    assert "".join(released) == "ab"  # "EN" could still become "END"
    assert stream.push(ord("x")) == "ENx"
    assert stream.finish() == ""


def test_the_earliest_of_several_stops_wins() -> None:
    pieces, _ = feed("one. two! three", stops=("!", "."))
    assert "".join(pieces) == "one"


def test_chinese_stop_sequence() -> None:
    pieces, stream = feed("您好。谢谢", stops=("。",))
    assert "".join(pieces) == "您好" and stream.stopped
