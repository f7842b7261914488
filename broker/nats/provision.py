"""Create the JetStream stream, consumers and KV buckets promptbus needs, idempotently.

Every component calls this at start-up; creating what exists already is a no-op and a
changed setting (say a new max_concurrency) updates the existing object in place.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import NamedTuple, ParamSpec, TypeVar

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_fixed

from broker.nats.subjects import (
    ALERTS,
    ATTEMPTS,
    BATCHES,
    BREAKERS,
    CACHE,
    EXPERIMENTS,
    KEYS,
    RATELIMITS,
    RESPONSES,
    WORKERS,
    Subjects,
    bucket,
)
from schemas.batch import COMPLETION_WINDOWS
from schemas.config import Config, DeploymentConfig, ModelConfig

log = logging.getLogger(__name__)

DUPLICATE_WINDOW_S = 120.0
INTAKE_MAX_ACK_PENDING = 1024

P = ParamSpec("P")
T = TypeVar("T")


def patient(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Retry a JetStream API call that timed out: a cluster creating R3 streams for
    several processes starting at once, or electing a leader, answers late. Every step
    here is idempotent, so a retry after a timeout that did succeed is harmless."""
    wrapped: Callable[P, Awaitable[T]] = retry(
        retry=retry_if_exception_type(NatsTimeoutError),
        stop=stop_after_attempt(5),
        wait=wait_fixed(0.5),
        reraise=True,
    )(fn)
    return wrapped


def _work_consumer(
    name: str, description: str, subject: str, max_ack_pending: int, config: Config
) -> ConsumerConfig:
    """A durable pull consumer of the work queue: explicit acks, nothing in hand beyond
    ``max_ack_pending`` (the excess waits in the stream, not in worker memory)."""
    return ConsumerConfig(
        durable_name=name,
        description=description,
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=config.worker.ack_wait_s,
        max_ack_pending=max_ack_pending,
        max_waiting=1024,
        num_replicas=config.nats.replicas,
    )


def consumer_config(model: ModelConfig, config: Config, subjects: Subjects) -> ConsumerConfig:
    """A model's queue: ``max_ack_pending`` is the sum of its deployments' concurrency."""
    return _work_consumer(
        subjects.queue_consumer(model.model_name, model.mode),
        f"{model.mode} requests for model {model.model_name}",
        subjects.queue(model.model_name, model.mode),
        sum(d.max_concurrency for d in model.deployments),
        config,
    )


def bulk_consumer_config(model: ModelConfig, config: Config, subjects: Subjects) -> ConsumerConfig:
    """A model's batch lane: every deployment pool pulls from it with the slots its
    interactive queue leaves idle, so the cap is the same as the interactive one."""
    return _work_consumer(
        subjects.bulk_consumer(model.model_name),
        f"batch lane for model {model.model_name}",
        subjects.bulk(model.model_name),
        sum(d.max_concurrency for d in model.deployments),
        config,
    )


def intake_consumer_config(
    model: ModelConfig, config: Config, subjects: Subjects
) -> ConsumerConfig:
    """A routed model's intake: requests published to the alias wait here until a worker
    routes them to a deployment's queue. Routing is cheap, so the cap is generous."""
    return _work_consumer(
        subjects.queue_consumer(model.model_name, model.mode),
        f"intake for routed model {model.model_name} ({model.routing})",
        subjects.queue(model.model_name, model.mode),
        INTAKE_MAX_ACK_PENDING,
        config,
    )


def deployment_consumer_config(
    deployment: DeploymentConfig, config: Config, subjects: Subjects
) -> ConsumerConfig:
    """One deployment's own queue (routed models): ``max_ack_pending`` = its concurrency."""
    return _work_consumer(
        subjects.dep_consumer(deployment.name),
        f"requests routed to deployment {deployment.name}",
        subjects.dep(deployment.name),
        deployment.max_concurrency,
        config,
    )


@patient
async def ensure_consumer(js: JetStreamContext, consumer: ConsumerConfig, stream: str) -> str:
    try:
        await js.add_consumer(stream, consumer)
    except BadRequestError as exc:
        raise RuntimeError(
            f"cannot create consumer {consumer.durable_name!r}: {exc.description}"
        ) from exc
    assert consumer.durable_name is not None
    return consumer.durable_name


@patient
async def ensure_replicas(js: JetStreamContext, stream: str, replicas: int) -> None:
    """Scale an existing stream (a KV bucket is one) to ``nats.replicas``: moving from
    the embedded R1 to a cluster's R3 needs no manual step, and an equal count is a no-op."""
    info = await js.stream_info(stream)
    if info.config.num_replicas == replicas:
        return
    info.config.num_replicas = replicas
    await js.update_stream(info.config)
    log.info("stream %s now has %d replicas", stream, replicas)


# ---------------------------------------------------------------- streams


def _requests(config: Config, subjects: Subjects) -> StreamConfig:
    """The work queue that holds every interactive request until a worker acks it."""
    return StreamConfig(
        name=subjects.stream,
        description="promptbus request queue (work queue: a message lives until acked)",
        subjects=[subjects.chat_wildcard, subjects.dep_wildcard, subjects.embed_wildcard],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=config.nats.max_queue_age_s,
        max_msgs=config.nats.max_queued_requests,
        discard=DiscardPolicy.NEW,  # a full queue refuses new requests, never drops queued ones
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=config.nats.replicas,
    )


def _bulk(config: Config, subjects: Subjects) -> StreamConfig:
    """The batch lane's work queue. Apart from the interactive stream so that batch lines
    never fill it (a full stream refuses new requests), may wait as long as a batch may
    run, and are de-duplicated over a short window (``batch.duplicate_window_s``)."""
    return StreamConfig(
        name=subjects.bulk_stream,
        description="promptbus batch lane (work queue: a line lives until acked)",
        subjects=[subjects.bulk_wildcard],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=float(max(COMPLETION_WINDOWS.values())),
        max_msgs=config.nats.max_queued_requests,
        discard=DiscardPolicy.NEW,
        duplicate_window=config.batch.duplicate_window_s,
        num_replicas=config.nats.replicas,
    )


def _results(config: Config, subjects: Subjects) -> StreamConfig:
    """Batch results: the reply subjects of batch lines are captured here until collected.
    One subject per batch; a redelivered line's second reply is stored too, and the
    reader keeps the first (``broker/batches/results.py``)."""
    return StreamConfig(
        name=subjects.results_stream,
        description="promptbus batch results (one subject per batch)",
        subjects=[subjects.bres_wildcard],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=config.batch.results_max_age_s,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=config.nats.replicas,
    )


DEAD_LETTER_MAX_AGE_S = 7 * 86_400.0
DEAD_LETTER_MAX_BYTES = 1024 * 1024 * 1024


def _dead(config: Config, subjects: Subjects) -> StreamConfig:
    """Poison requests (``<prefix>.dead.<model>``): the body and headers as queued, plus
    ``Pb-Dead-Reason``; kept a week (or 1 GiB, oldest dropped first) for an operator."""
    return StreamConfig(
        name=subjects.dead_stream,
        description="promptbus dead letters (requests that crashed or stalled workers)",
        subjects=[subjects.dead_wildcard],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=DEAD_LETTER_MAX_AGE_S,
        max_bytes=DEAD_LETTER_MAX_BYTES,
        num_replicas=config.nats.replicas,
    )


def _usage(config: Config, subjects: Subjects) -> StreamConfig:
    """Usage counters (``<prefix>.usage.>``): one message per counter, its total, kept by
    server-side message counters."""
    return StreamConfig(
        name=subjects.usage_stream,
        description="promptbus usage counters (tokens, costs) per key, tenant, model",
        subjects=[subjects.usage_wildcard],
        storage=StorageType.FILE,
        max_msgs_per_subject=1,  # a counter's total is its last message
        allow_msg_counter=True,
        allow_direct=True,
        num_replicas=config.nats.replicas,
    )


def _spend(config: Config, subjects: Subjects) -> StreamConfig:
    """Spend logs (``<prefix>.spend.<tenant>.<key>``): one record per request, kept for
    ``spend_log.retention_s``."""
    return StreamConfig(
        name=subjects.spend_stream,
        description="promptbus spend logs: one record per request, no prompts, no keys",
        subjects=[f"{subjects.prefix}.spend.>"],
        storage=StorageType.FILE,
        max_age=config.spend_log.retention_s,
        allow_direct=True,
        num_replicas=config.nats.replicas,
    )


class StreamKind(StrEnum):
    REQUESTS = "requests"
    BULK = "bulk"
    RESULTS = "results"
    DEAD = "dead"
    USAGE = "usage"
    SPEND = "spend"
    TELEMETRY = "telemetry"
    ALERTS = "alerts"


def _telemetry(config: Config, subjects: Subjects) -> StreamConfig:
    """Telemetry reports (``<prefix>.telemetry.<process>``): each process's counts of a few
    seconds, kept ``telemetry.retention_s`` for the charts and alert rules, 128 MiB at
    most (oldest dropped first): about 2 messages a second from ten processes."""
    return StreamConfig(
        name=subjects.telemetry_stream,
        description="promptbus telemetry: per-process counts for charts and alerts",
        subjects=[subjects.telemetry_wildcard],
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=config.telemetry.retention_s,
        max_bytes=128 * 1024 * 1024,
        num_replicas=config.nats.replicas,
    )


def _alerts(config: Config, subjects: Subjects) -> StreamConfig:
    """Alert history (``<prefix>.alerts.<rule>``): every alert's pending, firing,
    acknowledged and resolved events, kept ``alerts.history_retention_s``."""
    return StreamConfig(
        name=subjects.alerts_stream,
        description="promptbus alert history",
        subjects=[subjects.alerts_wildcard],
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=config.alerts.history_retention_s,
        num_replicas=config.nats.replicas,
    )


STREAMS: dict[StreamKind, Callable[[Config, Subjects], StreamConfig]] = {
    StreamKind.REQUESTS: _requests,
    StreamKind.BULK: _bulk,
    StreamKind.RESULTS: _results,
    StreamKind.DEAD: _dead,
    StreamKind.USAGE: _usage,
    StreamKind.SPEND: _spend,
    StreamKind.TELEMETRY: _telemetry,
    StreamKind.ALERTS: _alerts,
}
# Counter streams cannot be updated in place; an existing one is only scaled.
_CREATE_ONLY = frozenset({StreamKind.USAGE})


@patient
async def ensure_stream(
    js: JetStreamContext, config: Config, subjects: Subjects, kind: StreamKind
) -> None:
    """Create the stream of this kind, or bring an existing one to this configuration."""
    stream = STREAMS[kind](config, subjects)
    assert stream.name is not None
    try:
        await js.stream_info(stream.name)
    except NotFoundError:
        await js.add_stream(stream)
        log.info("created stream %s", stream.name)
        return
    if kind in _CREATE_ONLY:
        await ensure_replicas(js, stream.name, config.nats.replicas)
    else:
        await js.update_stream(stream)


# ---------------------------------------------------------------- KV buckets


class BucketSpec(NamedTuple):
    description: str
    history: int = 1
    ttl: Callable[[Config], float | None] = lambda _: None


RATELIMIT_TTL_S = 86_400.0  # an untouched bucket is full long before this


def _cache_ttl(config: Config) -> float | None:
    """Cache entries outlive no model's TTL."""
    return max([config.cache.ttl_s, *(m.cache_ttl_s or 0 for m in config.model_list)]) or None


BUCKETS: dict[str, BucketSpec] = {
    # key <model-token>.<worker-id>, expiring on its own
    WORKERS: BucketSpec("promptbus worker presence", ttl=lambda c: c.worker.presence_ttl_s),
    # the shared response cache (cache.backend: nats)
    CACHE: BucketSpec("promptbus response cache", ttl=_cache_ttl),
    # circuit breaker state shared by every worker: key = kv_key(deployment)
    BREAKERS: BucketSpec("promptbus circuit breakers"),
    # virtual API keys (digests only) and tenants: key.<id>, tenant.<name>
    KEYS: BucketSpec("promptbus API keys (SHA-256 digests) and tenants", history=5),
    # token-bucket state (one GCRA time per bucket) shared by every process
    RATELIMITS: BucketSpec("promptbus rate limit buckets", ttl=lambda _: RATELIMIT_TTL_S),
    # batch records (key = batch id), publishing checkpoints and resume keys
    BATCHES: BucketSpec("promptbus batches"),
    # Responses API responses kept for previous_response_id and GET (key <tenant>.<id>)
    RESPONSES: BucketSpec("promptbus stored responses", ttl=lambda c: c.responses.retention_s),
    # canary state per experiment (key = its name) and the judge's lease (judge)
    EXPERIMENTS: BucketSpec("promptbus experiments: canary steps and rollbacks"),
    # alerts pending or firing (active.<id>), rules added at run time (rule.<name>) and
    # the evaluator's lease (evaluator)
    ALERTS: BucketSpec("promptbus alerts: active alerts, rules, the evaluator's lease"),
    # starts of redelivered requests (key <stream>.<seq>): a request that ends its worker
    # every time is recognised on its nats.max_deliver-th start; written only for
    # redeliveries, never on the hot path; entries outlive any queued request
    ATTEMPTS: BucketSpec(
        "promptbus redelivered-request attempts",
        ttl=lambda c: float(max(COMPLETION_WINDOWS.values())) + c.nats.max_queue_age_s,
    ),
}


@patient
async def ensure_bucket(js: JetStreamContext, config: Config, kind: str) -> KeyValue:
    """The KV bucket of this kind (``BUCKETS``), created or scaled to ``nats.replicas``.
    File storage: every bucket survives a nats-server restart like the queue does."""
    spec = BUCKETS[kind]
    name = bucket(config.nats.subject_prefix, kind)
    try:
        kv = await js.key_value(name)
    except NotFoundError:  # BucketNotFoundError is a NotFoundError
        return await js.create_key_value(
            KeyValueConfig(
                bucket=name,
                description=spec.description,
                history=spec.history,
                ttl=spec.ttl(config),
                storage=StorageType.FILE,
                replicas=config.nats.replicas,
            )
        )
    await ensure_replicas(js, f"KV_{name}", config.nats.replicas)
    return kv


async def provision(js: JetStreamContext, config: Config, subjects: Subjects) -> None:
    """Everything a client needs before publishing: the streams and the presence bucket."""
    await ensure_stream(js, config, subjects, StreamKind.REQUESTS)
    await ensure_stream(js, config, subjects, StreamKind.BULK)
    await ensure_bucket(js, config, WORKERS)
