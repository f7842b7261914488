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

from broker.nats.kvwatch import KVFollower
from broker.nats.subjects import subject_token
from broker.nats.tasks import cancel_and_wait
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
        self._unavailable: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    def serve(self, model: str, stats: Callable[[], list[DeploymentStats]]) -> None:
        """Announce ``model``; ``stats`` describes its deployments at each beat."""
        self._models[model] = stats

    def cannot_serve(self, model: str, reason: str) -> None:
        """Announce that this worker was asked for ``model`` and cannot serve it, and why:
        callers are told the real cause instead of "start a worker"."""
        self._unavailable[model] = reason

    def _key(self, model: str) -> str:
        return f"{subject_token(model)}.{self._worker_id}"

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.create_task(self._loop())

    async def beat(self) -> None:
        """Put every model's beat at once: one round trip, however many models. (One
        after another, 20 models under load took longer than the TTL, and live workers
        vanished from the directory.)"""
        now = time.time()
        beats = [
            WorkerBeat(
                worker_id=self._worker_id,
                model=model,
                deployments=deployments,
                capacity=sum(d.capacity for d in deployments),
                inflight=sum(d.inflight for d in deployments),
                ts=now,
            )
            for model, deployments in ((m, stats()) for m, stats in self._models.items())
        ]
        beats += [
            WorkerBeat(
                worker_id=self._worker_id, model=model, deployments=[], ts=now, unavailable=why
            )
            for model, why in self._unavailable.items()
        ]
        await asyncio.gather(
            *(self._kv.put(self._key(beat.model), _encoder.encode(beat)) for beat in beats)
        )

    async def _loop(self) -> None:
        """Beat every period from the last beat's start, however long a beat took."""
        next_beat = time.monotonic()
        while True:
            next_beat = max(next_beat + self._period, time.monotonic())
            await asyncio.sleep(next_beat - time.monotonic())
            try:
                await self.beat()
            except Exception as exc:  # NATS away: try again next period
                log.debug("presence heartbeat failed: %s", exc)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)  # no beat may follow the deletes
        for model in [*self._models, *self._unavailable]:
            with contextlib.suppress(Exception):
                await self._kv.delete(self._key(model))


STALL_GRACE_S = 15.0  # longer than a JetStream leader election (4-9 s) and a reconnect


class WorkerDirectory:
    """A client's live view of which models and deployments are served, and how."""

    def __init__(self, kv: KeyValue, ttl: float) -> None:
        self._ttl = ttl
        self._seen: dict[str, dict[str, float]] = {}  # token -> worker_id -> monotonic ts
        self._beats: dict[str, WorkerBeat] = {}  # "<token>.<worker_id>" -> last beat
        # token -> worker_id -> (monotonic ts, why it cannot serve the model)
        self._unserved: dict[str, dict[str, tuple[float, str]]] = {}
        self._follower = KVFollower(kv, self._apply)
        self._heard = time.monotonic()  # the last update of any key

    async def start(self) -> None:
        await self._follower.start()

    def _horizon(self) -> float:
        """Beats older than this are gone. While no beat at all arrives (the bucket's
        leader is being elected after a NATS node died, or our connection is back from a
        reconnect), expiry pauses for up to ``STALL_GRACE_S``: silence everywhere is our
        blindness, not every worker dying at once."""
        now = time.monotonic()
        return max(now - self._ttl - STALL_GRACE_S, min(now, self._heard + 1.0) - self._ttl)

    def _apply(self, key: str, value: bytes | None, revision: int | None) -> None:
        self._heard = time.monotonic()
        token, _, worker_id = key.rpartition(".")
        if value is None:
            self._seen.get(token, {}).pop(worker_id, None)
            self._unserved.get(token, {}).pop(worker_id, None)
            self._beats.pop(key, None)
            return
        try:
            beat = beat_decoder.decode(value)
        except msgspec.DecodeError:
            return
        age = max(0.0, time.time() - beat.ts)
        if beat.unavailable is not None:
            self._unserved.setdefault(token, {})[worker_id] = (
                time.monotonic() - age,
                beat.unavailable,
            )
            return
        self._seen.setdefault(token, {})[worker_id] = time.monotonic() - age
        self._beats[key] = beat

    def is_served(self, model: str) -> bool:
        workers = self._seen.get(subject_token(model))
        if not workers:
            return False
        horizon = self._horizon()
        return any(ts > horizon for ts in workers.values())

    def why_unserved(self, model: str) -> str | None:
        """What a live worker asked to serve ``model`` said stops it, if one did."""
        horizon = self._horizon()
        for ts, reason in self._unserved.get(subject_token(model), {}).values():
            if ts > horizon:
                return reason
        return None

    def deployment_stats(self, model: str) -> dict[str, list[DeploymentStats]]:
        """The live workers' latest stats of each deployment of ``model``."""
        token = subject_token(model)
        horizon = time.time() - self._ttl
        stats: dict[str, list[DeploymentStats]] = {}
        for worker_id, _ in self._seen.get(token, {}).items():
            beat = self._beats.get(f"{token}.{worker_id}")
            if beat is None or beat.ts < horizon:
                continue
            for deployment in beat.deployments:
                stats.setdefault(deployment.name, []).append(deployment)
        return stats

    async def stop(self) -> None:
        await self._follower.stop()
