"""A stand-in `LoraSet` for registry tests: records loads and unloads, no torch, no peft.

A folder whose name contains "broken" fails to load, like a folder that is not an adapter.
`run_now` plays `Batcher.run_exclusive` (it runs the function at once). Used by
`test_adapter_config`, `test_adapter_variants` and `test_adapterz`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubetune_server.multi_lora import AdapterLoadError

T = TypeVar("T")


class FakeLora:
    """peft name -> folder, and the history of loads."""

    def __init__(self) -> None:
        self.loaded: dict[str, str] = {}
        self.loads: list[str] = []  # folders, in load order

    @property
    def names(self) -> list[str]:
        return list(self.loaded)

    def load(self, name: str, path: Path) -> None:
        self.loads.append(str(path))
        if "broken" in str(path):
            raise AdapterLoadError(f"{path} has no adapter_config.json (not a PEFT adapter folder)")
        self.loaded[name] = str(path)

    def unload(self, name: str) -> None:
        del self.loaded[name]

    def routing(self, adapters: Any) -> Any:
        from contextlib import nullcontext

        return nullcontext()


async def run_now(fn: Callable[[], T]) -> T:
    return fn()
