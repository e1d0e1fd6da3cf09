"""Named adapters of one server at run time: what is loaded, loading or failed, and why.

`app.py` creates one `AdapterRegistry` when the server serves named LoRA adapters; the admin routes
(`admin_routes.py`) and the adapter config watcher (`adapter_config.py`) call `load` and `unload`,
and the watcher the canary calls too; the completion routes call `route` to validate a request's
`model` and pick its variant, and the batch asks `peft_name` for the peft adapter serving it when
the batch starts. Loading runs on the generation thread (`Batcher.run_exclusive`), between
batches, so a batch never sees an adapter half loaded, and the event loop keeps answering.

Every loaded folder gets its own internal peft name `lora<n>`: loading a new folder under a
name that is already served loads it beside the old one, switches requests over in one step
and only then unloads the old one, so a swap drops no request. A load that fails leaves the
name `Failed` with the reason (and the old folder serving, if there was one); it is never retried
on its own: a new `load` call (or a changed entry in the config file) tries again.

A name may also have a canary, a second folder loaded beside the stable one that takes `percent`
of the name's requests; a canary that fails to load is Failed and takes none. Loading as stable
the folder the canary serves promotes it: its weights become the stable ones in one step, with
no reload. Which peft adapter serves which variant, and the counters: `adapter_variants`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from kubetune_server.adapter_variants import (
    AdapterReport,
    AdapterRoute,
    AdapterState,
    CanaryState,
    Draw,
    Served,
    VariantTable,
)
from kubetune_server.errors import ApiError
from kubetune_server.multi_lora import BASE, LoraSet
from kubetune_server.settings import ADAPTER_NAME

log = logging.getLogger(__name__)

T = TypeVar("T")
RunExclusive = Callable[[Callable[[], T]], Awaitable[T]]


class AdapterRegistry:
    """Public adapter names -> state and the peft adapters serving each (stable, canary)."""

    def __init__(
        self,
        lora: LoraSet,
        run_exclusive: RunExclusive[Any],
        base_name: str,
        draw: Draw = random.random,
    ) -> None:
        self.lora = lora
        self.base_name = base_name
        self._run = run_exclusive
        self._states: dict[str, AdapterState] = {}
        self._table = VariantTable(draw)
        self._counter = itertools.count()
        self._locks: dict[str, asyncio.Lock] = {}

    def states(self) -> list[AdapterState]:
        """Every known adapter, by name."""
        return [self._states[n] for n in sorted(self._states)]

    def get(self, name: str) -> AdapterState | None:
        return self._states.get(name)

    def canary(self, name: str) -> CanaryState | None:
        return self._table.canaries.get(name)

    def servable(self) -> list[str]:
        """Names a request can pick now."""
        return sorted(self._table.stable)

    def reports(self) -> list[AdapterReport]:
        """Every known adapter with its canary and the counters of what serves now, by name."""
        return [self._table.report(state) for state in self.states()]

    def report(self, name: str) -> AdapterReport | None:
        state = self._states.get(name)
        return None if state is None else self._table.report(state)

    async def load(self, name: str, path: str) -> AdapterState:
        """Load `path` as `name` (replacing what `name` served once it is loaded)."""
        if name == self.base_name:
            raise ValueError(f"adapter name {name!r} is the base model's name; pick another")
        if not ADAPTER_NAME.fullmatch(name):
            raise ValueError(f"adapter name must match {ADAPTER_NAME.pattern}, got {name!r}")
        async with self._lock(name):
            canary = self._table.canaries.get(name)
            if canary is not None and canary.path == path and name in self._table.canary:
                return await self._promote(name, path)
            old = self._states.get(name)
            serving = old.serving_path if old is not None else None
            self._set(AdapterState(name, path, "Loading", "", serving, time.time()))
            try:
                internal = await self._load_folder(path)
            except Exception as err:
                log.warning("adapter %s (%s) failed to load: %s", name, path, err)
                return self._set(AdapterState(name, path, "Failed", str(err), serving, time.time()))
            await self._point(self._table.stable, name, Served(internal))
            log.info("adapter %s loaded from %s", name, path)
            return self._set(AdapterState(name, path, "Loaded", "", path, time.time()))

    async def load_canary(self, name: str, path: str, percent: float) -> CanaryState:
        """Load `path` as the canary of `name`, taking `percent` of its requests once loaded."""
        _check_percent(percent)
        async with self._lock(name):
            if name not in self._states:
                raise ValueError(f"adapter {name!r} is not known; load its stable folder first")
            canaries = self._table.canaries
            canaries[name] = CanaryState(path, percent, "Loading", "", time.time())
            try:
                internal = await self._load_folder(path)
            except Exception as err:
                log.warning("canary of %s (%s) failed to load: %s", name, path, err)
                await self._point(self._table.canary, name, None)  # no canary traffic
                canaries[name] = CanaryState(path, percent, "Failed", str(err), time.time())
                return canaries[name]
            await self._point(self._table.canary, name, Served(internal))
            log.info("canary of %s loaded from %s (%s%% of requests)", name, path, percent)
            canaries[name] = CanaryState(path, percent, "Loaded", "", time.time())
            return canaries[name]

    def set_canary_percent(self, name: str, percent: float) -> None:
        """Change the share of the canary of `name` (no reload; its counters go on)."""
        _check_percent(percent)
        if name in self._table.canaries:
            canary = self._table.canaries[name]
            self._table.canaries[name] = dataclasses.replace(canary, percent=percent)

    async def drop_canary(self, name: str) -> bool:
        """Send every request of `name` to stable and unload its canary; False without one."""
        async with self._lock(name):
            return await self._drop_canary(name)

    async def unload(self, name: str) -> bool:
        """Stop serving `name` (and its canary) and free it; False when no such adapter is known."""
        async with self._lock(name):
            await self._drop_canary(name)
            if self._states.pop(name, None) is None:
                return False
            await self._point(self._table.stable, name, None)
            log.info("adapter %s unloaded", name)
            return True

    def route(self, model: str | None) -> AdapterRoute | None:
        """Where a request's `model` goes: None (the base) or a named adapter and its variant,
        drawn per request; ApiError when nothing can serve it (`check`)."""
        name = self.check(model)
        return None if name is None else self._table.route(name)

    def check(self, model: str | None) -> str | None:
        """The adapter a request's `model` names (None: the base); ApiError when none serves.

        Routes call this on the event loop; the batch resolves the name again when it starts
        (`peft_name`), so a swap between the two goes to the new folder.
        """
        if model is None or model == self.base_name:
            return None
        if model in self._table.stable:
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

    def peft_name(self, adapter: str | None, canary: bool = False) -> str | None:
        """The peft adapter serving `adapter` now (BASE for None); None when it was unloaded."""
        return BASE if adapter is None else self._table.peft_name(adapter, canary)

    async def _promote(self, name: str, path: str) -> AdapterState:
        """The canary of `name` (serving `path`) becomes its stable folder; counters restart."""
        canary = self._table.canary.pop(name)
        del self._table.canaries[name]
        await self._point(self._table.stable, name, Served(canary.peft))
        log.info("adapter %s: its canary %s is now the stable folder", name, path)
        return self._set(AdapterState(name, path, "Loaded", "", path, time.time()))

    async def _drop_canary(self, name: str) -> bool:
        if self._table.canaries.pop(name, None) is None:
            return False
        await self._point(self._table.canary, name, None)
        log.info("canary of adapter %s unloaded", name)
        return True

    async def _load_folder(self, path: str) -> str:
        """Load `path` under a new internal peft name (generation thread); that name."""
        internal = f"lora{next(self._counter)}"
        await self._run(lambda: self.lora.load(internal, Path(path)))
        return internal

    async def _point(self, table: dict[str, Served], name: str, new: Served | None) -> None:
        """Switch `table[name]` to `new` (None: remove), then unload what it served before."""
        previous = VariantTable.point(table, name, new)
        if previous is not None:
            await self._run(lambda: self.lora.unload(previous.peft))

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _set(self, state: AdapterState) -> AdapterState:
        self._states[state.name] = state
        return state


def _check_percent(percent: float) -> None:
    if not 0 < percent < 100:
        raise ValueError(f"canary percent must be > 0 and < 100, got {percent!r}")
