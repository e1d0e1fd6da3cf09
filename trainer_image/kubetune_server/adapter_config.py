"""`kubetune serve --adapter-config FILE`: keep the named adapters equal to a watched JSON file.

The file is an object whose entries are `"<name>": "<adapter folder>"` or, with a canary,
`"<name>": {"path": "<folder>", "canary": {"path": "<folder>", "percent": 10}}` (`canary` may be
left out or null; 0 < percent < 100: that share of the name's requests, drawn per request, goes
to the canary folder). The ModelDeployment operator writes it into a ConfigMap mounted in every
server pod, so adding, removing or re-pointing an adapter (or its canary) updates the running
servers (the kubelet refreshes the mounted file) instead of rolling them. `app.py` runs `watch` as
a task. Every `poll_s` seconds the file is read; when it changed, new and re-pointed names and
canaries are loaded (`AdapterRegistry.load` / `load_canary`, which swap without dropping
requests; a stable path that the canary already serves is promoted without a reload), a changed
percent applies at once, and names or canaries the file no longer lists are unloaded. A name or
canary whose load failed stays Failed until its entry changes: nothing is retried in a loop. A
file that does not parse (every entry is checked; the error names the file, the adapter, the
field and the bad value) is logged and reported (`error`, shown at `/adapterz`), and the
adapters already loaded keep serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_server.adapter_registry import AdapterRegistry

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1024 * 1024


@dataclass(frozen=True)
class CanaryEntry:
    """A canary folder and the share of requests (percent, 0 < percent < 100) it takes."""

    path: str
    percent: float


@dataclass(frozen=True)
class AdapterEntry:
    """One adapter of the file: its stable folder and maybe a canary."""

    path: str
    canary: CanaryEntry | None = None


def parse_adapter_entries(text: str, source: str) -> dict[str, AdapterEntry]:
    """{name: entry} from the file's text; ValueError naming the file, and for every bad entry
    the adapter, the field and the value."""
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: not JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: must be a JSON object {{name: folder}}, got {type(data).__name__}"
        )
    entries, problems = {}, []
    for name, value in data.items():
        try:
            entries[name] = _entry(value)
        except ValueError as err:
            problems.append(f"adapter {name!r}: {err}")
    if problems:
        raise ValueError(f"{source}: {'; '.join(problems)}")
    return entries


def parse_adapter_config(text: str, source: str) -> dict[str, str]:
    """{name: stable folder} from the file's text (canaries checked, then left out)."""
    return {name: entry.path for name, entry in parse_adapter_entries(text, source).items()}


def _entry(value: Any) -> AdapterEntry:
    """One entry: a folder, or {"path", "canary"}; ValueError naming the field and value."""
    if isinstance(value, str):
        return AdapterEntry(_folder(value, "path"))
    if not isinstance(value, dict):
        raise ValueError(f'must be a folder or an object {{"path", "canary"}}, got {value!r}')
    _only(value, "", {"path", "canary"})
    path, canary = _folder(value.get("path"), "path"), value.get("canary")
    if canary is None:
        return AdapterEntry(path)
    if not isinstance(canary, dict):
        raise ValueError(f'canary must be an object {{"path", "percent"}} or null, got {canary!r}')
    _only(canary, "canary.", {"path", "percent"})
    folder, percent = _folder(canary.get("path"), "canary.path"), _percent(canary.get("percent"))
    return AdapterEntry(path, CanaryEntry(folder, percent))


def _only(obj: dict[str, Any], prefix: str, allowed: set[str]) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ValueError(
            f"unknown field {prefix}{unknown[0]}, allowed: {', '.join(sorted(allowed))}"
        )


def _folder(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must name a folder, got {value!r}")
    return value


def _percent(value: Any) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not 0 < value < 100:
        raise ValueError(f"canary.percent must be a number > 0 and < 100, got {value!r}")
    return float(value)


class AdapterConfigWatcher:
    """Applies the file's adapters to the registry whenever the file changes."""

    def __init__(self, path: Path, registry: AdapterRegistry, poll_s: float) -> None:
        self.path, self.registry, self.poll_s = path, registry, poll_s
        self.error: str | None = None
        self._last: str | None = None
        self._managed: set[str] = set()

    async def watch(self) -> None:
        """Poll forever (cancel the task to stop)."""
        while True:
            await self.sync_once()
            await asyncio.sleep(self.poll_s)

    async def sync_once(self) -> None:
        """Read the file; when it changed, load and unload to match it."""
        try:
            text = await asyncio.to_thread(self._read)
        except OSError as err:
            text = ""
            if self._last != "":
                log.warning(
                    "adapter config %s cannot be read (%s): serving no adapters from it",
                    self.path,
                    err,
                )
        if text == self._last:
            return
        try:
            wanted = parse_adapter_entries(text, str(self.path))
        except ValueError as err:
            self.error, self._last = str(err), text
            log.error("%s; the adapters loaded before keep serving", err)
            return
        self.error, self._last = None, text
        await self._apply(wanted)

    def _read(self) -> str:
        with self.path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise OSError(f"larger than {MAX_CONFIG_BYTES} bytes")
        return data.decode("utf-8", errors="replace")  # bad bytes: a parse error or a bad name

    async def _apply(self, wanted: dict[str, AdapterEntry]) -> None:
        for name in sorted(self._managed - set(wanted)):
            await self.registry.unload(name)
        for name, entry in sorted(wanted.items()):
            try:
                await self._apply_entry(name, entry)
            except ValueError as err:  # e.g. the base model's own name
                log.error("adapter config %s: %s", self.path, err)
        self._managed = set(wanted)

    async def _apply_entry(self, name: str, entry: AdapterEntry) -> None:
        """Stable folder first (a promotion takes the canary's weights), then the canary."""
        state = self.registry.get(name)
        if state is None or state.path != entry.path:
            await self.registry.load(name, entry.path)
        now, wanted = self.registry.canary(name), entry.canary
        if wanted is None:
            if now is not None:
                await self.registry.drop_canary(name)
        elif now is None or now.path != wanted.path:
            await self.registry.load_canary(name, wanted.path, wanted.percent)
        elif now.percent != wanted.percent:
            self.registry.set_canary_percent(name, wanted.percent)
