"""The freshest bodies of a kind's objects the operator has seen, so a reconcile need not GET them.

Bodies arrive from the watch (every FineTuneJob event) and from the API server's answers to the
operator's own status patches. The watch can lag behind a patch the operator just made; keeping
whichever body has the higher `resourceVersion` means a reconcile never plans from a status
older than its own last write. (resourceVersions are etcd revisions, so comparing them as
integers is sound on one cluster; a body whose version is not a number is simply replaced.)
Held by `runner` (`Runner.bodies`); fed by `finetune.handlers` (watch events) and
`finetune.reconcile` (status patches), and read by `finetune.reconcile`.
"""

from __future__ import annotations

import threading
from typing import Any

Key = tuple[str, str]
Json = dict[str, Any]


def _version(body: Json) -> int | None:
    value = str(body.get("metadata", {}).get("resourceVersion", ""))
    return int(value) if value.isdigit() else None


def is_newer(candidate: Json, current: Json | None) -> bool:
    """Whether `candidate` should replace `current`."""
    if current is None:
        return True
    new, old = _version(candidate), _version(current)
    return new is None or old is None or new >= old


class BodyCache:
    """Thread-safe map (namespace, name) -> freshest body."""

    def __init__(self) -> None:
        self._bodies: dict[Key, Json] = {}
        self._lock = threading.Lock()

    def offer(self, key: Key, body: Json) -> None:
        with self._lock:
            if is_newer(body, self._bodies.get(key)):
                self._bodies[key] = body

    def get(self, key: Key) -> Json | None:
        with self._lock:
            return self._bodies.get(key)

    def drop(self, key: Key) -> None:
        with self._lock:
            self._bodies.pop(key, None)

    def __len__(self) -> int:
        return len(self._bodies)
