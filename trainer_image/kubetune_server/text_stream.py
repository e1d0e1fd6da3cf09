"""Token ids -> text pieces, safe to send: whole characters, and stop sequences cut off.

`batching.py` keeps one `TextStream` per request and feeds it each generated token. A piece is
released only when it cannot change: a trailing partial UTF-8 character (a Chinese character
spans several byte-level tokens) and a tail that could still grow into a stop sequence are held
back. When a stop sequence appears, the text before it is released and the stream says stop.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


class TextStream:
    """Incremental detokenizer with stop sequences."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer
        self._stops = tuple(s for s in stops if s)
        self._ids: list[int] = []
        self._sent = 0
        self._text = ""
        self.stopped = False

    @property
    def text(self) -> str:
        """Everything released so far."""
        return self._text[: self._sent]

    def push(self, token_id: int) -> str:
        """Add a token; return the newly releasable text (maybe empty)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        self._text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        cut = self._find_stop()
        if cut is not None:
            self.stopped = True
            self._text = self._text[:cut]
            return self._release(cut)
        end = len(self._text)
        while end > self._sent and self._text[end - 1] == REPLACEMENT:
            end -= 1
        return self._release(end - self._pending_stop_prefix(end))

    def finish(self) -> str:
        """Release what was held back at the end of generation (no stop matched)."""
        return "" if self.stopped else self._release(len(self._text))

    def _release(self, end: int) -> str:
        piece = self._text[self._sent : end] if end > self._sent else ""
        self._sent = max(self._sent, end)
        return piece

    def _find_stop(self) -> int | None:
        longest = max((len(s) for s in self._stops), default=0)
        start = max(0, self._sent - longest)
        hits = [i for s in self._stops if (i := self._text.find(s, start)) >= 0]
        return min(hits) if hits else None

    def _pending_stop_prefix(self, end: int) -> int:
        """Length of the longest tail of text[:end] that starts some stop sequence."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, end - self._sent), best, -1):
                if self._text[end - n : end] == stop[:n]:
                    best = n
                    break
        return best
