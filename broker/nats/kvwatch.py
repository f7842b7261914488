"""Follow a JetStream KV bucket: initial values first, then every change, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nats.js.kv import KeyValue

from broker.nats.tasks import cancel_and_wait

# Called with (key, value or None when deleted/purged/expired, revision).
OnEntry = Callable[[str, bytes | None, int | None], None]


class KVFollower:
    def __init__(self, kv: KeyValue, on_entry: OnEntry) -> None:
        self._kv = kv
        self._on_entry = on_entry
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 10.0) -> None:
        """Return once the bucket's current contents have been delivered."""
        watcher = await self._kv.watchall()
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._follow(watcher, ready))
        await asyncio.wait_for(ready.wait(), timeout)

    async def _follow(self, watcher: KeyValue.KeyWatcher, ready: asyncio.Event) -> None:
        async for entry in watcher:
            if entry is None:  # end of the initial values
                ready.set()
                continue
            deleted = entry.operation in ("DEL", "PURGE") or not entry.value
            self._on_entry(entry.key, None if deleted else entry.value, entry.revision)
            ready.set()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
