"""Qwen3 chat formatting, tokenization and loss masking: a validated `Row` becomes tokens.

Called by the loader (`kubetune_trainer.data.loader`), once per row. A conversation is rendered
by the tokenizer's own chat template (`apply_chat_template`, non-thinking mode), so the training
text is byte for byte what the server renders at inference. For an `input-target` row the prompt
is the rendering of the user turn with the generation prompt, which for Qwen3 ends
`<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n`; the supervised part is the target
followed by `<|im_end|>`. In a `messages` row every assistant turn's content and its closing
`<|im_end|>` are supervised and everything else is masked. A `text` row is all supervised, with
`<|endoftext|>` appended.

Tokenization: each stretch of masked text is tokenized in one piece (as the server tokenizes a
prompt), and each supervised content is tokenized on its own. Tokenizing prompt and target
separately is what generation does (the model continues after the prompt's last token), so no
BPE merge can straddle the prompt/target boundary; for ordinary rows it equals tokenizing the
whole rendering (tested). Every token carries a `Role`, which the truncation in
`kubetune_trainer.data.filters` reads. This module does no filtering and keeps no counters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

from kubetune_trainer.data.jsonl import Row, RowError, Turn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
_CONTROL_TOKENS = (IM_START, IM_END, END_OF_TEXT)

# head: the template's opening (kept on left truncation); prompt: other masked tokens;
# tail: the generation prompt before the last answer (kept); target: supervised content;
# end: the supervised closing token (<|im_end|> or <|endoftext|>).
Role = Literal["head", "prompt", "tail", "target", "end"]
SUPERVISED_ROLES: frozenset[str] = frozenset({"target", "end"})
MASKED_ROLES: frozenset[str] = frozenset({"head", "prompt", "tail"})


@dataclass
class Example:
    """One training sequence: `labels[i]` is `input_ids[i]` where supervised, else -100."""

    input_ids: list[int]
    labels: list[int]
    line: int
    task: str | None = None
    path: str = ""  # the file the line is in (for file:line in errors)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Encoded:
    """A row's tokens, each with its role; what truncation works on before labels exist."""

    ids: list[int] = field(default_factory=list)
    roles: list[Role] = field(default_factory=list)

    def extend(self, ids: list[int], role: Role) -> None:
        self.ids.extend(ids)
        self.roles.extend([role] * len(ids))

    def count(self, roles: frozenset[str]) -> int:
        return sum(1 for r in self.roles if r in roles)

    def to_example(self, line: int, task: str | None) -> Example:
        """Labels from roles; the first label is always -100 (no token predicts it)."""
        labels = [
            i if r in SUPERVISED_ROLES else IGNORE_INDEX
            for i, r in zip(self.ids, self.roles, strict=True)
        ]
        if labels:
            labels[0] = IGNORE_INDEX
        return Example(list(self.ids), labels, line, task)


@dataclass(frozen=True)
class _Span:
    """Where one turn's content sits in the rendered conversation (character offsets)."""

    start: int
    end: int
    role: str


class ChatEncoder:
    """Turns rows into `Encoded` tokens with one tokenizer (Qwen3's template and control tokens)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        vocab = tokenizer.get_vocab()
        missing = [t for t in (IM_END, END_OF_TEXT) if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks {', '.join(missing)}: not a Qwen3 tokenizer")
        if not tokenizer.is_fast:
            raise ValueError(f"a fast tokenizer is required, got {type(tokenizer).__name__}")
        if not tokenizer.chat_template:
            raise ValueError("tokenizer has no chat template (chat_template is empty)")
        self.tokenizer = tokenizer
        self.im_end_id = int(vocab[IM_END])
        self.end_of_text_id = int(vocab[END_OF_TEXT])
        self._pieces: dict[tuple[str, ...], list[str]] = {}

    def encode(self, row: Row) -> Encoded:
        """Tokens and roles of a conversation or a text row."""
        if row.text is not None:
            return self.encode_text(row.text)
        return self.encode_chat(row.turns)

    def encode_text(self, text: str) -> Encoded:
        """All tokens supervised, `<|endoftext|>` appended."""
        _reject_control_tokens("text", text)
        out = Encoded()
        out.extend(self._ids(text), "target")
        out.extend([self.end_of_text_id], "end")
        return out

    def encode_chat(self, turns: tuple[Turn, ...]) -> Encoded:
        """Render with the chat template; supervise each assistant content + `<|im_end|>`."""
        for i, turn in enumerate(turns):
            _reject_control_tokens(f"messages[{i}].content", turn.content)
        last = max(i for i, t in enumerate(turns) if t.role == "assistant")
        turns = turns[: last + 1]  # turns after the last answer teach nothing
        rendered = self.render(turns)
        spans = self._locate(rendered, turns)
        head_end = spans[0].start
        tail_start = spans[-2].end if len(spans) > 1 else 0
        out, cursor = Encoded(), 0
        for span in spans:
            if span.role != "assistant":
                continue
            self._masked(out, rendered, cursor, span.start, head_end, tail_start)
            out.extend(self._ids(rendered[span.start : span.end]), "target")
            out.extend([self.im_end_id], "end")
            cursor = span.end + len(IM_END)
        return out

    def render(self, turns: tuple[Turn, ...], *, generation_prompt: bool = False) -> str:
        """The chat template's text for `turns` (non-thinking mode), untokenized."""
        text = self.tokenizer.apply_chat_template(
            [asdict(t) for t in turns],
            tokenize=False,
            add_generation_prompt=generation_prompt,
            enable_thinking=False,
        )
        if not isinstance(text, str):
            raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}")
        return text

    def _locate(self, rendered: str, turns: tuple[Turn, ...]) -> list[_Span]:
        """Where each turn's content sits in `rendered`, anchored on the template's own text.

        The template is rendered once per sequence of roles with placeholders for the contents;
        the real rendering must equal those template pieces with the contents put back (for an
        answer, Qwen3 may strip leading newlines). A template that rewrites a content (Qwen3
        turns `<think>...</think>` in an answer into reasoning) fails the row.
        """
        pieces = self._template_pieces(tuple(t.role for t in turns))
        for strip in (False, True):
            contents = [
                t.content.lstrip("\n") if strip and t.role == "assistant" else t.content
                for t in turns
            ]
            if _joined(pieces, contents) == rendered:
                return _spans(pieces, contents, turns)
        changed = next(
            (i for i, t in enumerate(turns) if t.role == "assistant" and "think>" in t.content),
            len(turns) - 1,
        )
        raise RowError(
            f"messages[{changed}].content is changed by the chat template "
            "(a <think> block in an answer?), so its tokens cannot be located"
        )

    def _template_pieces(self, roles: tuple[str, ...]) -> list[str]:
        """The template's text around the contents, for this sequence of roles (cached)."""
        if roles not in self._pieces:
            marks = [_placeholder(i) for i in range(len(roles))]
            text = self.render(tuple(Turn(r, m) for r, m in zip(roles, marks, strict=True)))
            pieces = []
            for mark in marks:
                before, found, text = text.partition(mark)
                if not found:
                    raise ValueError(f"the chat template drops or reorders turns of roles {roles}")
                pieces.append(before)
            pieces.append(text)
            for i, role in enumerate(roles):
                if role == "assistant" and not pieces[i + 1].startswith(IM_END):
                    raise ValueError(f"the chat template does not close an answer with {IM_END}")
            self._pieces[roles] = pieces
        return self._pieces[roles]

    def _masked(
        self, out: Encoded, text: str, start: int, stop: int, head_end: int, tail_start: int
    ) -> None:
        """Tokenize `text[start:stop]` in one piece; mark the template's head and tail tokens."""
        if start >= stop:
            return
        enc = self.tokenizer(
            text[start:stop], add_special_tokens=False, return_offsets_mapping=True
        )
        for token_id, (begin, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            if start + end <= head_end:
                out.extend([token_id], "head")
            elif start + begin >= tail_start and tail_start > 0:
                out.extend([token_id], "tail")
            else:
                out.extend([token_id], "prompt")

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def _reject_control_tokens(where: str, text: str) -> None:
    for token in _CONTROL_TOKENS:
        if token in text:
            raise RowError(f'{where} contains the control token "{token}"')


def _placeholder(index: int) -> str:
    """A content stand-in no template rewrites and no real text contains (private-use chars)."""
    return f"\ue000kubetune-turn-{index}\ue001"


def _joined(pieces: list[str], contents: list[str]) -> str:
    return "".join(p + c for p, c in zip(pieces, contents, strict=False)) + pieces[-1]


def _spans(pieces: list[str], contents: list[str], turns: tuple[Turn, ...]) -> list[_Span]:
    """Character spans of the contents between the template pieces."""
    spans, cursor = [], 0
    for i, (turn, content) in enumerate(zip(turns, contents, strict=True)):
        start = cursor + len(pieces[i])
        cursor = start + len(content)
        spans.append(_Span(start, cursor, turn.role))
    return spans
