"""Optional bearer-token check for the API routes of the server and the router.

`routes.py` and `router_app.py` depend on `Authorized`; the key lives in `app.state.api_key`
(None: no key needed). Health and metrics endpoints do not depend on it. Comparison is constant
time; a missing or wrong key is a 401 with an OpenAI-style body.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from kubetune_server.errors import ApiError


def check_api_key(request: Request) -> None:
    """Raise 401 unless the request carries `Authorization: Bearer <key>` (when a key is set)."""
    expected: str | None = getattr(request.app.state, "api_key", None)
    if not expected:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        raise ApiError(
            401,
            "Missing or invalid API key: send it as 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


Authorized = Annotated[None, Depends(check_api_key)]
