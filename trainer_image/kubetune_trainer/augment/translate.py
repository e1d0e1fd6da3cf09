"""Back-translation through an OpenAI-compatible chat endpoint: source -> pivot -> source.

`BackTranslator.paraphrase_many` sends each text twice through `POST {endpoint}/chat/completions`
(a system message asks for a translation only; temperature 0) and returns, per text, either the
paraphrase or the reason it failed: an HTTP error status, a timeout, a refused connection, a
reply without `choices[0].message.content`. Failures never raise; the caller counts them. Texts
of one call run concurrently (`workers` threads sharing one httpx client). Called by
`kubetune_trainer.augment.augment_rows`; knows nothing about rows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from kubetune_api import ConfigError
from kubetune_api.extras import BackTranslation

SYSTEM_PROMPT = (
    "Translate the user's text from {source} to {target}. "
    "Reply with the translation only: no notes, no quotes."
)


class TranslationError(RuntimeError):
    """One request failed; the message is a short reason for the run summary."""


class BackTranslator:
    """A client for one endpoint; use as a context manager to close its connections."""

    def __init__(
        self, spec: BackTranslation, *, client: httpx.Client | None = None, workers: int = 4
    ) -> None:
        self.spec = spec
        self.url = spec.endpoint.rstrip("/") + "/chat/completions"
        self.workers = workers
        self.client = client or httpx.Client(timeout=spec.timeout_seconds, headers=_auth(spec))
        self._owns_client = client is None

    def __enter__(self) -> BackTranslator:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owns_client:
            self.client.close()

    def translate(self, text: str, source: str, target: str) -> str:
        """One translation; raises TranslationError with the reason."""
        body = {
            "model": self.spec.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT.format(source=source, target=target)},
                {"role": "user", "content": text},
            ],
        }
        try:
            response = self.client.post(self.url, json=body)
        except httpx.TimeoutException as err:
            raise TranslationError(f"timeout after {self.spec.timeout_seconds}s") from err
        except httpx.HTTPError as err:
            raise TranslationError(f"{type(err).__name__}: {err}") from err
        if response.status_code != 200:
            raise TranslationError(f"HTTP {response.status_code} from {self.url}")
        return _content(response)

    def paraphrase(self, text: str) -> str:
        """source -> pivot -> source; raises TranslationError."""
        source, pivot = self.spec.source_language, self.spec.pivot_language
        return self.translate(self.translate(text, source, pivot), pivot, source)

    def paraphrase_many(self, texts: Sequence[str]) -> list[str | TranslationError]:
        """Each text's paraphrase, or the error that stopped it, in input order."""
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(texts)))) as pool:
            return list(pool.map(self._safe_paraphrase, texts))

    def _safe_paraphrase(self, text: str) -> str | TranslationError:
        try:
            return self.paraphrase(text)
        except TranslationError as err:
            return err


def _content(response: httpx.Response) -> str:
    try:
        data: Any = response.json()
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise TranslationError(f"reply is not a chat completion: {response.text[:80]!r}") from err
    if not isinstance(content, str) or not content.strip():
        raise TranslationError(f"empty translation: {content!r}")
    return content.strip()


def _auth(spec: BackTranslation) -> dict[str, str]:
    if spec.api_key_env is None:
        return {}
    token = os.environ.get(spec.api_key_env)
    if not token:
        raise ConfigError(
            [
                "dataset.augmentation.backTranslation.apiKeyEnv: environment variable "
                f"{spec.api_key_env!r} is not set"
            ]
        )
    return {"Authorization": f"Bearer {token}"}
