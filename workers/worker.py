"""A worker process: one pull consumer per (model, deployment) it serves, plus presence."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import uuid

import prometheus_client
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from broker.batches.blocks import lines_per_block
from broker.nats.acks import AckConfirmer
from broker.nats.connection import close as close_connection
from broker.nats.connection import connect
from broker.nats.credentials import Role, login_for
from broker.nats.expiry import Expiry
from broker.nats.provision import (
    StreamKind,
    bulk_consumer_config,
    consumer_config,
    deployment_consumer_config,
    ensure_bucket,
    ensure_consumer,
    ensure_stream,
    intake_consumer_config,
    provision,
)
from broker.nats.pull import PullConsumer
from broker.nats.subjects import ATTEMPTS, BREAKERS, WORKERS, Subjects
from broker.observability import metrics, otel
from broker.routing.presence import PresencePublisher, WorkerDirectory
from broker.routing.router import Router
from broker.telemetry.counts import Telemetry
from broker.telemetry.reporter import TelemetryReporter
from broker.tenancy.admission import Admission
from broker.tenancy.usage import UsageRecorder
from schemas.config import Config, DeploymentConfig, ModelConfig
from schemas.envelope import H_REPLY_TO
from schemas.line_block import declared_lines
from schemas.state import BreakerState, DeploymentStats
from workers.breaker import BreakerBoard
from workers.failover import Failover
from workers.intake import Intake
from workers.metering import Accounting
from workers.pacing import Pacer
from workers.poison import PoisonGuard
from workers.pool import DeploymentPool, PoolShared
from workers.providers import Provider, ProviderUnavailable, make_provider

log = logging.getLogger(__name__)


QUEUE_POLL_S = 5.0
_BREAKER_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
INTAKE_CAPACITY = 64  # routing requests on is cheap: a worker may hold this many at once
PACE_TICK_S = 0.05  # how often a rate-limited pool looks whether it may pull again


def _stats(served: list[tuple[DeploymentPool, PullConsumer]]) -> list[DeploymentStats]:
    stats = []
    for pool, _ in served:
        breaker = pool.breaker
        latency = pool.latency_ewma_s
        stats.append(
            DeploymentStats(
                name=pool.name,
                capacity=pool.deployment.max_concurrency,
                inflight=pool.slots.busy,
                requests=breaker.requests,
                failures=breaker.failures,
                retries=pool.retries,
                failovers=pool.failovers,
                error_rate=round(breaker.error_rate(), 4),
                latency_ewma_ms=None if latency is None else round(latency * 1000, 3),
                breaker=breaker.state.value,
                cost_usd=round(pool.cost_usd, 6),
            )
        )
    return stats


class Worker:
    """Serves the configured models (or the ``models`` subset) until stopped."""

    def __init__(self, config: Config, models: list[str] | None = None) -> None:
        unknown = sorted(set(models or []) - {m.model_name for m in config.model_list})
        if unknown:
            raise ValueError(f"unknown model(s) for this worker: {', '.join(unknown)}")
        self.config = config
        self.models = [m for m in config.model_list if not models or m.model_name in models]
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._consumers: list[PullConsumer] = []  # one per pool, in the order of _pools
        self._batch_consumers: list[PullConsumer] = []  # the batch lane, same order
        self._pacers: list[tuple[Pacer, PullConsumer, PullConsumer]] = []
        self._pace_task: asyncio.Task[None] | None = None
        self._accounting: Accounting | None = None
        self._intakes: list[PullConsumer] = []
        self._directory: WorkerDirectory | None = None
        self._queues: set[tuple[str, str]] = set()  # (stream, consumer)
        self._queue_watch: asyncio.Task[None] | None = None
        self._cancels: Subscription | None = None
        self._pools: list[DeploymentPool] = []
        self._presence: PresencePublisher | None = None
        self._breakers: BreakerBoard | None = None
        self._nc: NATS | None = None
        self._owns_connection = False
        self._poison: PoisonGuard | None = None
        self._reporter: TelemetryReporter | None = None
        self._acker: AckConfirmer | None = None
        self._expiry = Expiry()  # the pools' deadlines and attempt timeouts, one sweeper

    async def start(self, url: str | None = None, nc: NATS | None = None) -> None:
        if nc is None:
            nc = await connect(
                url or self.config.nats.url or "",
                "promptbus-worker",
                login_for(self.config, Role.WORKER),
            )
            self._owns_connection = True
        self._nc = nc
        js = nc.jetstream()
        config = self.config
        otel.start(config.otel, "worker")
        subjects = Subjects.of(config)
        await provision(js, config, subjects)
        kv = await ensure_bucket(js, config, WORKERS)
        self._presence = PresencePublisher(kv, self.worker_id, config.worker.heartbeat_s)
        self._directory = WorkerDirectory(kv, config.worker.presence_ttl_s)
        board = BreakerBoard(await ensure_bucket(js, config, BREAKERS), self.worker_id)
        await ensure_stream(js, config, subjects, StreamKind.DEAD)
        await ensure_stream(js, config, subjects, StreamKind.SPEND)
        telemetry = None
        if config.telemetry.enabled:
            await ensure_stream(js, config, subjects, StreamKind.TELEMETRY)
            telemetry = Telemetry()
            self._reporter = TelemetryReporter(
                js, subjects, self.worker_id, telemetry, config.telemetry.report_every_s
            )
        self._poison = PoisonGuard(
            nc, await ensure_bucket(js, config, ATTEMPTS), subjects, config.worker.max_deliver
        )
        recorder = UsageRecorder(nc, config.nats.subject_prefix)
        self._accounting = Accounting(await Admission.open(nc, config), recorder)
        recorder.start()
        self._breakers = board
        router = Router(config, subjects, self._directory, board.state)
        failover = Failover(subjects, js, router)
        self._acker = AckConfirmer(nc)
        shared = PoolShared(
            nc,
            self._acker,
            failover,
            config.worker,
            config.transforms,
            self._poison,
            self._accounting,
            telemetry=telemetry,
            expiry=self._expiry,
        )
        board.on_change(self._repace)
        for model in self.models:
            routed = model.routing != "least-busy"
            if routed:
                consumer = intake_consumer_config(model, config, subjects)
            else:
                consumer = consumer_config(model, config, subjects)
            queue = await ensure_consumer(js, consumer, subjects.stream)
            self._queues.add((subjects.stream, queue))
            # The batch lane: every deployment pulls it directly (least-busy), routing or not.
            batch_queue = await ensure_consumer(
                js, bulk_consumer_config(model, config, subjects), subjects.bulk_stream
            )
            self._queues.add((subjects.bulk_stream, batch_queue))
            served: list[tuple[DeploymentPool, PullConsumer]] = []
            skipped: list[str] = []
            for deployment in model.deployments:
                try:
                    provider = make_provider(deployment)
                except ProviderUnavailable as exc:
                    log.warning("not serving %s: %s", model.model_name, exc)
                    skipped.append(str(exc))
                    continue
                if routed:  # each deployment pulls from its own queue
                    own = deployment_consumer_config(deployment, config, subjects)
                    pool_queue = await ensure_consumer(js, own, subjects.stream)
                    self._queues.add((subjects.stream, pool_queue))
                else:  # every deployment pulls from the model's queue: least-busy
                    pool_queue = queue
                queues = (pool_queue, batch_queue)
                served.append(self._pool(nc, subjects, queues, provider, deployment, model, shared))
            if not served:
                self._presence.cannot_serve(model.model_name, "; ".join(skipped))
                continue
            if routed:
                intake = Intake(nc, model, failover)
                self._intakes.append(
                    PullConsumer(nc, subjects.stream, queue, INTAKE_CAPACITY, intake.handle)
                )
            self._presence.serve(model.model_name, functools.partial(_stats, served))
            names = ", ".join(pool.name for pool, _ in served)
            log.info("serving %s via %s (%s)", model.model_name, names, model.routing)
        if not self._pools:
            raise RuntimeError("this worker can serve none of its models (see warnings above)")
        await self._directory.start()
        await board.start()
        self._repace()
        for pull in self._consumers + self._batch_consumers + self._intakes:
            await pull.start()
        if self._pacers:
            self._pace_task = asyncio.create_task(self._pace())
        await self._presence.start()
        if self._reporter is not None:
            self._reporter.start()
        self._cancels = await nc.subscribe(subjects.cancel, cb=self._on_cancel)
        self._queue_watch = asyncio.create_task(self._watch_queues(js, sorted(self._queues)))
        if config.worker.metrics_port is not None:
            prometheus_client.start_http_server(
                config.worker.metrics_port, addr=config.worker.metrics_host
            )

    def _pool(
        self,
        nc: NATS,
        subjects: Subjects,
        queues: tuple[str, str],
        provider: Provider,
        deployment: DeploymentConfig,
        model: ModelConfig,
        shared: PoolShared,
    ) -> tuple[DeploymentPool, PullConsumer]:
        """A deployment's pool and its two pull loops (interactive, batch lane), paced by
        the deployment's breaker and, if it has one, its rate ceiling."""
        assert self._breakers is not None
        breaker = self._breakers.add(deployment.name, deployment.breaker)
        pacer = None
        if deployment.rpm or deployment.tpm:
            pacer = Pacer(
                deployment.rpm,
                deployment.tpm,
                functools.partial(self._workers_serving, model.model_name, deployment.name),
            )
        pool = DeploymentPool(deployment, model, provider, breaker, shared, pacer)
        pool.start()
        interactive_queue, batch_queue = queues
        capacity = deployment.max_concurrency
        pace = pacer.available if pacer is not None else None
        interactive = PullConsumer(
            nc,
            subjects.stream,
            interactive_queue,
            capacity,
            pool.handle,
            gate=pace,
            on_done=lambda: batch.kick(),  # a slot interactive work left may go to batch
        )

        def idle_slots() -> int:
            # Batch work takes only slots that interactive requests neither hold nor want.
            idle = interactive.capacity - interactive.inflight - batch.inflight
            return min(idle, pace()) if pace is not None else idle

        batch = PullConsumer(
            nc,
            subjects.bulk_stream,
            batch_queue,
            capacity,
            pool.handle_batch,
            gate=idle_slots,
            weigh=lambda msg: declared_lines(msg.headers),  # a block counts its lines
            unit=lines_per_block(model, self.config.batch.lines_per_message),
        )
        if pacer is not None:
            self._pacers.append((pacer, interactive, batch))
        self._pools.append(pool)
        self._consumers.append(interactive)
        self._batch_consumers.append(batch)
        return pool, interactive

    def _workers_serving(self, model: str, deployment: str) -> int:
        """Live workers sharing a deployment's rate ceiling (this one at least)."""
        if self._directory is None:
            return 1
        return max(1, len(self._directory.deployment_stats(model).get(deployment, ())))

    async def _pace(self) -> None:
        """Rate-limited pools stop pulling at their ceiling: resume when it allows."""
        while True:
            await asyncio.sleep(PACE_TICK_S)
            for pacer, interactive, batch in self._pacers:
                if pacer.available() > 0:
                    interactive.kick()
                    batch.kick()

    async def _on_cancel(self, msg: Msg) -> None:
        reply_to = (msg.headers or {}).get(H_REPLY_TO)
        if reply_to:
            for pool in self._pools:
                if pool.cancel(reply_to):
                    log.debug("cancelled the request answering to %s", reply_to)

    def _repace(self) -> None:
        """A breaker changed somewhere: let each pull loop take what its pool may run."""
        lanes = zip(self._pools, self._consumers, self._batch_consumers, strict=True)
        for pool, consumer, batch in lanes:
            consumer.set_capacity(pool.pull_capacity())
            batch.set_capacity(pool.pull_capacity())
            state = _BREAKER_GAUGE[pool.breaker.state]
            metrics.BREAKER_STATE.labels(pool.name).set(state)

    async def _watch_queues(self, js: JetStreamContext, queues: list[tuple[str, str]]) -> None:
        """Queue depths from JetStream for the metrics, every few seconds."""
        while True:
            for stream, queue in queues:
                with contextlib.suppress(Exception):
                    info = await js.consumer_info(stream, queue)
                    metrics.QUEUED.labels(queue).set(info.num_pending)
            await asyncio.sleep(QUEUE_POLL_S)

    async def stop(self, grace: float = 30.0) -> None:
        """Leave the directory first so no new work is routed here, then drain."""
        if self._queue_watch:
            self._queue_watch.cancel()
        if self._pace_task:
            self._pace_task.cancel()
        if self._cancels is not None:
            with contextlib.suppress(Exception):
                await self._cancels.unsubscribe()
        if self._presence:
            await self._presence.stop()
        if self._breakers:
            await self._breakers.stop()
        pulls = self._consumers + self._batch_consumers + self._intakes
        await asyncio.gather(*(c.stop(grace) for c in pulls))
        if self._directory:
            await self._directory.stop()
        await asyncio.gather(*(p.stop() for p in self._pools))
        if self._acker is not None:
            await self._acker.close()  # the drained requests' acks are confirmed
        await self._expiry.close()
        if self._reporter is not None:
            await self._reporter.stop()  # what the drained requests counted
        if self._accounting is not None:
            await self._accounting.recorder.stop()  # the last batch of usage
            await self._accounting.admission.close()
        otel.shutdown()
        if self._nc is not None and self._owns_connection:
            await close_connection(self._nc)
