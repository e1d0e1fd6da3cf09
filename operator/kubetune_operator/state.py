"""A typed slot for what kopf handlers need at call time, set once by `cli` before kopf starts.

Handlers are registered at import, as kopf's own examples do, so the parts they use (a runner,
the metrics) cannot be closure variables; each handlers module keeps them in one `Slot`, which
`cli.run` fills and tests fill with fakes. Reading an empty slot is a bug, said so loudly.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Slot(Generic[T]):
    """One value, set at startup and read by handlers."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._value: T | None = None

    def set(self, value: T) -> None:
        self._value = value

    def get(self) -> T:
        if self._value is None:
            raise RuntimeError(f"{self.what}: used before `kubetune operator` set it up")
        return self._value

    def clear(self) -> None:
        self._value = None
