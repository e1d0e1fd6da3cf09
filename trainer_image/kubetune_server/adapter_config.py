"""`kubetune serve --adapter-config FILE`: keep the named adapters equal to a watched JSON file.

The file is an object `{"<name>": "<adapter folder>", ...}`; the ModelDeployment operator
writes it into a ConfigMap mounted in every server pod, so adding, removing or re-pointing an
adapter updates the running servers (the kubelet refreshes the mounted file) instead of rolling
them. `app.py` runs `watch` as a task. Every `poll_s` seconds the file is read; when it changed,
new and re-pointed names are loaded (`AdapterRegistry.load`, which swaps without dropping
requests) and names the file no longer lists are unloaded. A name whose load failed stays
Failed until its entry changes: nothing is retried in a loop. A file that does not parse is
logged and reported (`error`), and the adapters already loaded keep serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from kubetune_server.adapter_registry import AdapterRegistry

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1024 * 1024


def parse_adapter_config(text: str, source: str) -> dict[str, str]:
    """{name: folder} from the file's text; ValueError naming the file and the bad entry."""
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: not JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: must be a JSON object {{name: folder}}, got {type(data).__name__}"
        )
    for name, folder in data.items():
        if not isinstance(folder, str) or not folder:
            raise ValueError(f"{source}: adapter {name!r} must name a folder, got {folder!r}")
    return dict(data)


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
            wanted = parse_adapter_config(text, str(self.path))
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
        return data.decode("utf-8")

    async def _apply(self, wanted: dict[str, str]) -> None:
        for name in sorted(self._managed - set(wanted)):
            await self.registry.unload(name)
        for name, folder in sorted(wanted.items()):
            state = self.registry.get(name)
            if state is None or state.path != folder:
                try:
                    await self.registry.load(name, folder)
                except ValueError as err:  # e.g. the base model's own name
                    log.error("adapter config %s: %s", self.path, err)
                    continue
        self._managed = set(wanted)
