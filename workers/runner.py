"""A worker process: one pull consumer per (model, deployment) it serves, plus presence."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import uuid

from nats.aio.client import Client as NATS

from broker.connection import connect
from broker.presence import PresencePublisher
from broker.provision import ensure_consumer, ensure_workers_bucket, provision
from broker.pull import PullConsumer
from broker.subjects import Subjects
from schemas.config import Config
from workers.pool import DeploymentPool
from workers.providers import ProviderUnavailable, make_provider

log = logging.getLogger(__name__)


def _inflight(consumers: list[PullConsumer]) -> int:
    return sum(consumer.inflight for consumer in consumers)


class Worker:
    """Serves the configured models (or the ``models`` subset) until stopped."""

    def __init__(self, config: Config, models: list[str] | None = None) -> None:
        unknown = sorted(set(models or []) - {m.model_name for m in config.model_list})
        if unknown:
            raise ValueError(f"unknown model(s) for this worker: {', '.join(unknown)}")
        self.config = config
        self.models = [m for m in config.model_list if not models or m.model_name in models]
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._consumers: list[PullConsumer] = []
        self._pools: list[DeploymentPool] = []
        self._presence: PresencePublisher | None = None
        self._nc: NATS | None = None
        self._owns_connection = False

    async def start(self, url: str | None = None, nc: NATS | None = None) -> None:
        if nc is None:
            nc = await connect(url or self.config.nats.url or "", "promptbus-worker")
            self._owns_connection = True
        self._nc = nc
        js = nc.jetstream()
        subjects = Subjects(self.config.nats.subject_prefix, self.config.nats.stream)
        await provision(js, self.config, subjects)
        kv = await ensure_workers_bucket(js, self.config)
        self._presence = PresencePublisher(kv, self.worker_id, self.config.worker.heartbeat_s)
        for model in self.models:
            served: list[str] = []
            consumers: list[PullConsumer] = []
            capacity = 0
            durable = await ensure_consumer(js, model, self.config, subjects)
            for deployment in model.deployments:
                try:
                    provider = make_provider(deployment)
                except ProviderUnavailable as exc:
                    log.warning("not serving %s: %s", model.model_name, exc)
                    continue
                pool = DeploymentPool(nc, provider, self.config.worker.ack_wait_s)
                pool.start()
                consumer = PullConsumer(
                    nc, subjects.stream, durable, deployment.max_concurrency, pool.handle
                )
                await consumer.start()
                self._pools.append(pool)
                self._consumers.append(consumer)
                consumers.append(consumer)
                served.append(deployment.name)
                capacity += deployment.max_concurrency
            if served:
                self._presence.serve(
                    model.model_name,
                    served,
                    capacity,
                    functools.partial(_inflight, consumers),
                )
                log.info("serving %s via %s", model.model_name, ", ".join(served))
        if not self._pools:
            raise RuntimeError("this worker can serve none of its models (see warnings above)")
        await self._presence.start()

    async def stop(self, grace: float = 30.0) -> None:
        """Leave the directory first so no new work is routed here, then drain."""
        if self._presence:
            await self._presence.stop()
        await asyncio.gather(*(c.stop(grace) for c in self._consumers))
        await asyncio.gather(*(p.stop() for p in self._pools))
        if self._nc is not None and self._owns_connection:
            await self._nc.drain()
