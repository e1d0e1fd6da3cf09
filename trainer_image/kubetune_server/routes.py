"""The OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models.

With named LoRA adapters the request's `model` picks one (the base's name, or none, picks the
base; an unknown name is a 404, an adapter still loading or failed a 503 saying so). An adapter
with a canary sends each request to the canary folder with its percent's probability; the answer
says which in `x-kubetune-adapter-variant: stable|canary`, and the variant's counters count the
request once it is queued, and an error when it then fails with a 5xx (`adapter_variants`).

Included by `app.py`, behind `auth.RequestGuard` (API key, body limit). Each completion route
refuses a prompt over `max_prompt_chars` characters (400, before any tokenizing), turns the
request into prompt ids in a worker thread (chat template, non-thinking unless
`chat_template_kwargs` asks; the event loop keeps answering `/healthz` meanwhile), checks them
against the context window (400),
caps `max_tokens` by the server's `maxNewTokens`, queues it (429 with Retry-After when the queue
is full) and answers in one body or as server-sent events ending with `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from kubetune_server.adapter_variants import VARIANT_HEADER, AdapterRoute
from kubetune_server.batching import Event, QueueFullError, Ticket
from kubetune_server.engine import GenerationJob
from kubetune_server.errors import ApiError, error_body
from kubetune_server.sampling import SamplingParams
from kubetune_server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
    SamplingFields,
    Usage,
)
from kubetune_server.state import Ready, ReadyServer

router = APIRouter()

RETRY_AFTER_S = 1
Chunk = Callable[[str | None, str | None], dict[str, Any]]  # (text, finish_reason) -> body


@router.get("/v1/models")
async def list_models(server: Ready) -> ModelList:
    """The base model, and the named adapters that can be served now (`parent`: the base)."""
    base = server.settings.model_name
    cards = [ModelCard(id=base, created=server.created)]
    if server.adapters is not None:
        for state in server.adapters.states():
            if state.serving_path is not None:
                cards.append(ModelCard(id=state.name, created=int(state.since), parent=base))
    return ModelList(data=cards)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, server: Ready, response: Response
) -> ChatCompletion | StreamingResponse:
    """Chat completion, whole or streamed."""
    _check_prompt_chars(server, body)
    route = _pick_adapter(server, body.model)
    adapter, headers = _adapter_headers(route, response)
    messages = [{"role": _role(m.role), "content": m.text()} for m in body.messages]
    try:
        prompt = await asyncio.to_thread(
            server.engine.chat_prompt_ids, messages, body.chat_template_kwargs
        )
    except Exception as err:  # the template rejects some conversations (e.g. no user turn)
        raise ApiError(400, f"messages cannot be formatted with the chat template: {err}.") from err
    ticket = _submit(server, prompt, body, body.requested_max_tokens(), route)
    rid, model, created = (
        f"chatcmpl-{uuid.uuid4().hex[:24]}",
        adapter or server.settings.model_name,
        _now(),
    )
    if body.stream:
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}

        def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
            delta = {"content": text} if text is not None else {}
            return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        first = {**head, "choices": [role]}
        return _sse(server, ticket, chunk, head, body.include_usage(), first, headers)
    text, reason = await _collect(server, ticket, headers)
    return ChatCompletion(
        id=rid,
        created=created,
        model=model,
        choices=[
            ChatChoice(
                message=AssistantMessage(content=text),
                finish_reason=reason,
                token_ids=ticket.token_ids if body.return_token_ids else None,
            )
        ],
        usage=_usage(ticket),
    )


@router.post("/v1/completions", response_model=None)
async def completions(
    body: CompletionRequest, server: Ready, response: Response
) -> Completion | StreamingResponse:
    """Text completion of a raw prompt, whole or streamed."""
    _check_prompt_chars(server, body)
    route = _pick_adapter(server, body.model)
    adapter, headers = _adapter_headers(route, response)
    prompt = await asyncio.to_thread(server.engine.text_prompt_ids, body.prompt_text())
    ticket = _submit(server, prompt, body, body.requested_max_tokens(), route)
    rid, model, created = (
        f"cmpl-{uuid.uuid4().hex[:24]}",
        adapter or server.settings.model_name,
        _now(),
    )
    if body.stream:
        head = {"id": rid, "object": "text_completion", "created": created, "model": model}

        def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            return {**head, "choices": [choice]}

        return _sse(server, ticket, chunk, head, body.include_usage(), None, headers)
    text, reason = await _collect(server, ticket, headers)
    return Completion(
        id=rid,
        created=created,
        model=model,
        choices=[
            CompletionChoice(
                text=text,
                finish_reason=reason,
                token_ids=ticket.token_ids if body.return_token_ids else None,
            )
        ],
        usage=_usage(ticket),
    )


def _role(role: str) -> str:
    return "system" if role == "developer" else role


def _now() -> int:
    return int(time.time())


def _check_prompt_chars(server: ReadyServer, body: SamplingFields) -> None:
    """400 for a prompt longer than the server's character cap (no tokenizing needed)."""
    chars, cap = body.prompt_chars(), server.settings.max_prompt_chars
    if chars > cap:
        raise ApiError(
            400,
            f"The prompt has {chars} characters; this server accepts at most {cap} "
            "(--max-prompt-chars).",
            code="prompt_too_long",
        )


def _pick_adapter(server: ReadyServer, model: str | None) -> AdapterRoute | None:
    """The named adapter `model` asks for and its variant (None: the base). A server without
    named adapters serves its one model whatever `model` says, as before multi-LoRA."""
    return None if server.adapters is None else server.adapters.route(model)


def _adapter_headers(
    route: AdapterRoute | None, response: Response
) -> tuple[str | None, dict[str, str]]:
    """The adapter's name, and the variant header (set on `response`, returned for the others)."""
    if route is None:
        return None, {}
    response.headers[VARIANT_HEADER] = route.variant
    return route.name, {VARIANT_HEADER: route.variant}


def _submit(
    server: ReadyServer,
    prompt: list[int],
    body: SamplingFields,
    requested: int | None,
    route: AdapterRoute | None = None,
) -> Ticket:
    """Check limits, build the job and queue it (counted for its adapter's variant)."""
    engine, settings = server.engine, server.settings
    if not prompt:
        raise ApiError(400, "The prompt is empty; send at least one token of text.")
    if len(prompt) >= engine.context_length:
        raise ApiError(
            400,
            f"The prompt has {len(prompt)} tokens; this model's context is "
            f"{engine.context_length} tokens, which leaves no room to generate.",
            code="context_length_exceeded",
        )
    cap = min(requested or settings.max_new_tokens, settings.max_new_tokens)
    params = SamplingParams(
        max_new_tokens=engine.max_new_tokens_for(len(prompt), cap),
        temperature=body.temperature
        if body.temperature is not None
        else engine.loaded.default_temperature,
        top_p=body.top_p if body.top_p is not None else engine.loaded.default_top_p,
        stop=tuple(body.stop_list()),
        seed=body.seed,
        ignore_eos=body.ignore_eos,
    )
    adapter, canary = (route.name, route.variant == "canary") if route else (None, False)
    on_fail = route.counts.record_failure if route else None
    try:
        ticket = server.batcher.submit(GenerationJob(prompt, params, adapter, canary), on_fail)
    except QueueFullError:
        raise ApiError(
            429,
            "The server is busy (its request queue is full); retry shortly.",
            type_="rate_limit_exceeded",
            code="queue_full",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    if route is not None:
        route.counts.record_request()
    server.metrics.prompt_tokens.inc(len(prompt))
    return ticket


async def _events(ticket: Ticket) -> AsyncIterator[Event]:
    while True:
        event = await ticket.events.get()
        yield event
        if event.kind != "text":
            return


async def _collect(server: ReadyServer, ticket: Ticket, headers: dict[str, str]) -> tuple[str, Any]:
    """The whole text and finish reason of a non-streamed request (errors carry `headers`)."""
    pieces: list[str] = []
    try:
        async for event in _events(ticket):
            if event.kind == "error":
                raise ApiError(
                    event.status,
                    event.text,
                    type_=_error_type(event),
                    code=event.code,
                    headers=headers,
                )
            if event.kind == "done":
                server.metrics.completion_tokens.inc(ticket.completion_tokens)
                return "".join(pieces), event.finish_reason
            pieces.append(event.text)
    finally:
        ticket.cancel()  # no-op when finished; stops generation if the client left
    raise AssertionError("event stream ended without a finish event")


def _sse(
    server: ReadyServer,
    ticket: Ticket,
    chunk: Chunk,
    head: dict[str, Any],
    include_usage: bool,
    first: dict[str, Any] | None,
    headers: dict[str, str],
) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            if first is not None:
                yield _data(first)
            async for event in _events(ticket):
                if event.kind == "error":
                    yield _data(error_body(event.text, _error_type(event), event.code))
                    break
                if event.kind == "done":
                    server.metrics.completion_tokens.inc(ticket.completion_tokens)
                    yield _data(chunk(None, event.finish_reason))
                    if include_usage:
                        yield _data({**head, "choices": [], "usage": _usage(ticket).model_dump()})
                    break
                yield _data(chunk(event.text, None))
            yield "data: [DONE]\n\n"
        finally:
            ticket.cancel()

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", **headers}
    )


def _error_type(event: Event) -> str:
    return "invalid_request_error" if event.status < 500 else "server_error"


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _usage(ticket: Ticket) -> Usage:
    return Usage(
        prompt_tokens=ticket.prompt_tokens,
        completion_tokens=ticket.completion_tokens,
        total_tokens=ticket.prompt_tokens + ticket.completion_tokens,
    )
