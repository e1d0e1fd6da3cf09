"""Named adapters of one server at run time: what is loaded, loading or failed, and why.

`app.py` creates one `AdapterRegistry` when the server serves named LoRA adapters; the admin routes
(`admin_routes.py`) and the adapter config watcher (`adapter_config.py`) call `load` and `unload`;
the completion routes call `check` to validate a request's `model`, and the batch asks `peft_name`
for the peft adapter serving it when the batch starts. Loading runs on the generation thread
(`Batcher.run_exclusive`), between batches, so a batch never sees an adapter half loaded, and the
event loop keeps answering meanwhile.

Every public name maps to an internal peft name `lora<n>`: loading a new folder under a
name that is already served loads it beside the old one, switches requests over in one step
and only then unloads the old one, so a swap drops no request. A load that fails leaves the
name `Failed` with the reason (and the old folder serving, if there was one); it is never retried
on its own: a new `load` call (or a changed entry in the config file) tries again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from kubetune_server.errors import ApiError
from kubetune_server.multi_lora import BASE, LoraSet
from kubetune_server.settings import ADAPTER_NAME

log = logging.getLogger(__name__)

State = Literal["Loading", "Loaded", "Failed"]
T = TypeVar("T")
RunExclusive = Callable[[Callable[[], T]], Awaitable[T]]


@dataclass(frozen=True)
class AdapterState:
    """One named adapter as clients and the operator see it."""

    name: str
    path: str  # the folder asked for last
    state: State
    reason: str = ""
    serving_path: str | None = None  # the folder requests go to now (None: not servable)
    since: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The wire form of GET /v1/adapters."""
        return {
            "name": self.name,
            "path": self.path,
            "state": self.state,
            "reason": self.reason or None,
            "servingPath": self.serving_path,
            "since": int(self.since),
        }


class AdapterRegistry:
    """Public adapter names -> state and the peft adapter serving each."""

    def __init__(self, lora: LoraSet, run_exclusive: RunExclusive[Any], base_name: str) -> None:
        self.lora = lora
        self.base_name = base_name
        self._run = run_exclusive
        self._states: dict[str, AdapterState] = {}
        self._serving: dict[str, str] = {}  # public name -> peft name
        self._counter = itertools.count()
        self._locks: dict[str, asyncio.Lock] = {}

    def states(self) -> list[AdapterState]:
        """Every known adapter, by name."""
        return [self._states[n] for n in sorted(self._states)]

    def get(self, name: str) -> AdapterState | None:
        return self._states.get(name)

    def servable(self) -> list[str]:
        """Names a request can pick now."""
        return sorted(self._serving)

    async def load(self, name: str, path: str) -> AdapterState:
        """Load `path` as `name` (replacing what `name` served once it is loaded)."""
        if name == self.base_name:
            raise ValueError(f"adapter name {name!r} is the base model's name; pick another")
        if not ADAPTER_NAME.fullmatch(name):
            raise ValueError(f"adapter name must match {ADAPTER_NAME.pattern}, got {name!r}")
        async with self._locks.setdefault(name, asyncio.Lock()):
            old = self._states.get(name)
            serving = old.serving_path if old is not None else None
            self._set(AdapterState(name, path, "Loading", "", serving, time.time()))
            internal = f"lora{next(self._counter)}"
            try:
                await self._run(lambda: self.lora.load(internal, Path(path)))
            except Exception as err:
                log.warning("adapter %s (%s) failed to load: %s", name, path, err)
                return self._set(AdapterState(name, path, "Failed", str(err), serving, time.time()))
            previous = self._serving.get(name)
            self._serving[name] = internal
            if previous is not None:
                await self._run(lambda: self.lora.unload(previous))
            log.info("adapter %s loaded from %s", name, path)
            return self._set(AdapterState(name, path, "Loaded", "", path, time.time()))

    async def unload(self, name: str) -> bool:
        """Stop serving `name` and free it; False when no such adapter is known."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            if self._states.pop(name, None) is None:
                return False
            internal = self._serving.pop(name, None)
            if internal is not None:
                await self._run(lambda: self.lora.unload(internal))
            log.info("adapter %s unloaded", name)
            return True

    def check(self, model: str | None) -> str | None:
        """The adapter a request's `model` picks (None: the base); ApiError when none can serve.

        Routes call this on the event loop; the batch resolves the name again when it starts
        (`peft_name`), so a swap between the two goes to the new folder.
        """
        if model is None or model == self.base_name:
            return None
        if model in self._serving:
            return model
        state = self._states.get(model)
        if state is not None:
            why = f": {state.reason}" if state.reason else ""
            raise ApiError(
                503, f"Adapter {model!r} is {state.state}{why}.", code="adapter_not_loaded"
            )
        known = ", ".join([self.base_name, *self.servable()])
        raise ApiError(
            404,
            f"The model {model!r} does not exist on this server; it serves: {known}.",
            code="model_not_found",
        )

    def peft_name(self, adapter: str | None) -> str | None:
        """The peft adapter serving `adapter` now (BASE for None); None when it was unloaded."""
        if adapter is None:
            return BASE
        return self._serving.get(adapter)

    def _set(self, state: AdapterState) -> AdapterState:
        self._states[state.name] = state
        return state
