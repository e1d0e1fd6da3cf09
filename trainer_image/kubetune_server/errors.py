"""OpenAI-style errors: `{"error": {"message", "type", "code"}}` with a one-sentence message.

`app.py` and `router_app.py` install `install_error_handlers`; routes raise `ApiError` for what
they decide themselves (context too long, queue full, bad key). FastAPI's own validation errors
(malformed JSON, wrong types, unknown roles) become 400 `invalid_request_error` naming the field.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    """An error the client sees as an OpenAI error body with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.headers = headers or {}


def error_body(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    """The JSON body OpenAI clients parse."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def error_response(err: ApiError) -> JSONResponse:
    """`err` as a response."""
    return JSONResponse(
        error_body(err.message, err.type, err.code), status_code=err.status, headers=err.headers
    )


def describe_validation(errors: list[Any]) -> str:
    """One sentence for the first of pydantic's errors, naming the field and the bad value."""
    if not errors:
        return "The request body is invalid."
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return (
            f"The request body is not valid JSON ({detail})."
            if detail
            else ("The request body is not valid JSON.")
        )
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = ".".join(loc) or "body"
    msg = str(first.get("msg", "is invalid")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        return f"{where}: field required."
    if first.get("type") in ("model_attributes_type", "dict_type") and not loc:
        return "The request body must be a JSON object."
    value = first.get("input")
    shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    return f"{where}: {msg}, got {shown}."


async def _on_api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _on_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message = describe_validation(list(exc.errors()))
    return JSONResponse(error_body(message, "invalid_request_error", "invalid_value"), 400)


async def _on_http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return JSONResponse(
        error_body(str(exc.detail), "invalid_request_error", code),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the OpenAI error body."""
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
