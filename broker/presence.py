"""Which models have a live worker, shared through the ``pb_workers`` KV bucket.

Workers ``put`` ``<model-token>.<worker-id>`` every ``heartbeat_s``; the bucket's TTL
drops keys of workers that died. Clients watch the bucket and keep a local table, so
"is anyone serving this model?" is a dict lookup on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec
from nats.js.kv import KeyValue

from broker.subjects import model_token
from schemas.state import DeploymentStats, WorkerBeat, beat_decoder

log = logging.getLogger(__name__)


_encoder = msgspec.json.Encoder()


class PresencePublisher:
    """A worker's heartbeat for each model it serves."""

    def __init__(self, kv: KeyValue, worker_id: str, period: float) -> None:
        self._kv = kv
        self._worker_id = worker_id
        self._period = period
        self._models: dict[str, Callable[[], list[DeploymentStats]]] = {}
        self._task: asyncio.Task[None] | None = None

    def serve(self, model: str, stats: Callable[[], list[DeploymentStats]]) -> None:
        """Announce ``model``; ``stats`` describes its deployments at each beat."""
        self._models[model] = stats

    def _key(self, model: str) -> str:
        return f"{model_token(model)}.{self._worker_id}"

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.create_task(self._loop())

    async def beat(self) -> None:
        for model, stats in self._models.items():
            deployments = stats()
            beat = WorkerBeat(
                worker_id=self._worker_id,
                model=model,
                deployments=deployments,
                capacity=sum(d.capacity for d in deployments),
                inflight=sum(d.inflight for d in deployments),
                ts=time.time(),
            )
            await self._kv.put(self._key(model), _encoder.encode(beat))

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            try:
                await self.beat()
            except Exception as exc:  # NATS away: try again next period
                log.debug("presence heartbeat failed: %s", exc)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        for model in self._models:
            with contextlib.suppress(Exception):
                await self._kv.delete(self._key(model))


class WorkerDirectory:
    """A client's live view of which models are served."""

    def __init__(self, kv: KeyValue, ttl: float) -> None:
        self._kv = kv
        self._ttl = ttl
        self._seen: dict[str, dict[str, float]] = {}  # token -> worker_id -> monotonic ts
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        watcher = await self._kv.watchall()
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._follow(watcher, ready))
        await asyncio.wait_for(ready.wait(), 10)

    async def _follow(self, watcher: KeyValue.KeyWatcher, ready: asyncio.Event) -> None:
        async for entry in watcher:
            if entry is None:  # end of the initial values
                ready.set()
                continue
            self._apply(entry)
            ready.set()

    def _apply(self, entry: KeyValue.Entry) -> None:
        token, _, worker_id = entry.key.rpartition(".")
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self._seen.get(token, {}).pop(worker_id, None)
            return
        try:
            beat = beat_decoder.decode(entry.value)
        except msgspec.DecodeError:
            return
        age = max(0.0, time.time() - beat.ts)
        self._seen.setdefault(token, {})[worker_id] = time.monotonic() - age

    def is_served(self, model: str) -> bool:
        workers = self._seen.get(model_token(model))
        if not workers:
            return False
        horizon = time.monotonic() - self._ttl
        return any(ts > horizon for ts in workers.values())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
