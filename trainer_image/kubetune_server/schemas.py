"""OpenAI-compatible request and response bodies (pydantic), shared by the server and the router.

`routes.py` validates requests with these models and builds responses from them; the router
reads requests with them too (to score them) but forwards the client's original bytes. Requests
are strict (a string where a number belongs is a 400, not a silent cast) and ignore fields we do
not implement (`user`, `logprobs`, penalties ...), as OpenAI-compatible servers commonly do. Only
`n = 1` is served.

Sampling fields are refused (400 naming the field and the value), never clamped: `seed` must
fit in 64 bits (signed or unsigned, what torch's generator takes), `temperature` is 0 (greedy)
or from `MIN_TEMPERATURE` to 2 (below it the softmax overflows to inf/nan), `top_p` is in
(0, 1], and a stop sequence has at most `MAX_STOP_CHARS` characters.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["system", "developer", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length"]

MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 1000
MIN_TEMPERATURE = 0.01  # vLLM's floor too (it clamps; we refuse, so nothing changes silently)
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


class StrictRequest(BaseModel):
    """Base of request bodies: strict types, unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(StrictRequest):
    """One part of a multi-part message content; only text is served."""

    type: Literal["text"]
    text: str


class ChatMessage(StrictRequest):
    """One turn of a conversation."""

    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(StrictRequest):
    """`stream_options`: whether the last chunk carries token usage."""

    include_usage: bool = False


class SamplingFields(StrictRequest):
    """Sampling fields shared by chat and text completions."""

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="only one choice per request is served")
    return_token_ids: bool = Field(default=False, description="vLLM extension: echo token ids")
    ignore_eos: bool = Field(default=False, description="vLLM extension: generate past EOS")

    @field_validator("temperature")
    @classmethod
    def _no_tiny_temperature(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return value

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(value)}")
        stops = [value] if isinstance(value, str) else value or []
        longest = max((len(s) for s in stops), default=0)
        if longest > MAX_STOP_CHARS:
            raise ValueError(
                f"a stop sequence has at most {MAX_STOP_CHARS} characters, got {longest}"
            )
        return value

    def prompt_chars(self) -> int:
        """Characters of the prompt text (checked against the server's cap before tokenizing)."""
        raise NotImplementedError

    def stop_list(self) -> list[str]:
        """`stop` as a list of non-empty strings."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(SamplingFields):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    chat_template_kwargs: dict[str, Any] | None = None

    def prompt_chars(self) -> int:
        """Characters of every message's content together."""
        return sum(len(m.text()) for m in self.messages)

    def requested_max_tokens(self) -> int | None:
        """`max_completion_tokens` (the newer name) or `max_tokens`."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    """`POST /v1/completions` (one prompt per request)."""

    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError(f"exactly one prompt per request is served, got {len(value)}")
        return value

    def prompt_text(self) -> str:
        """The single prompt."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def prompt_chars(self) -> int:
        """Characters of the prompt."""
        return len(self.prompt_text())

    def requested_max_tokens(self) -> int | None:
        """`max_tokens` (OpenAI's default for completions is 16; ours is the server's cap)."""
        return self.max_tokens


class Usage(BaseModel):
    """Token counts of one request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    """The generated message."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    """The one choice of a chat completion."""

    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    token_ids: list[int] | None = None


class ChatCompletion(BaseModel):
    """Response of a non-streaming chat completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    """What a stream chunk adds to the message."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """The one choice of a stream chunk."""

    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    """The one choice of a text completion (also used for its stream chunks)."""

    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: None = None
    token_ids: list[int] | None = None


class Completion(BaseModel):
    """Response (and stream chunk) of a text completion."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """One entry of `GET /v1/models`."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kubetune"
    parent: str | None = None  # for an adapter: the base model it runs on (as vLLM lists LoRA)


class ModelList(BaseModel):
    """`GET /v1/models`."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
