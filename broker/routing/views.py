"""Operator views and actions over the shared state: breakers and deployments.

Used by the ingress's admin API (and by any CLI); reads the KV buckets and consumer
info, so it sees every worker process, not one.
"""

from __future__ import annotations

import time
from typing import Literal

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from broker.nats.subjects import BREAKERS, WORKERS, Subjects, breaker_key, bucket
from schemas.config import Config
from schemas.errors import NotFound
from schemas.state import (
    BreakerRecord,
    BreakerState,
    DeploymentStats,
    WorkerBeat,
    beat_decoder,
    record_decoder,
)

_encoder = msgspec.json.Encoder()


class BreakerView(msgspec.Struct, kw_only=True):
    deployment: str
    model: str
    state: str
    since: float
    reason: str
    forced: bool
    owner: str
    requests: int  # provider attempts, summed over live workers
    failures: int
    error_rate: float  # highest among live workers, over the breaker window


class DeploymentView(msgspec.Struct, kw_only=True):
    deployment: str
    model: str
    provider: str
    max_concurrency: int
    workers: int  # live worker processes serving it
    inflight: int
    queued: int | None  # requests waiting in the model's queue (shared by its deployments)
    latency_ewma_ms: float | None
    error_rate: float
    requests: int
    failures: int
    retries: int
    failovers: int
    breaker: str
    cost_usd: float  # summed over live workers, since each started
    # when the newest heartbeat these counts come from was sent (rates divide by its
    # change, not by the time between two reads: beats and reads are not in step)
    as_of: float | None = None


async def _entries(kv: KeyValue) -> list[bytes]:
    try:
        keys = await kv.keys()
    except NoKeysError:
        return []
    values = []
    for key in keys:
        try:
            entry = await kv.get(key)
        except NotFoundError:  # expired between keys() and get()
            continue
        if entry.value:
            values.append(entry.value)
    return values


async def live_beats(js: JetStreamContext, config: Config) -> list[WorkerBeat]:
    horizon = time.time() - config.worker.presence_ttl_s
    beats = []
    for value in await _entries(await js.key_value(bucket(config.nats.subject_prefix, WORKERS))):
        try:
            beat = beat_decoder.decode(value)
        except msgspec.DecodeError:
            continue
        if beat.ts >= horizon and beat.unavailable is None:
            beats.append(beat)
    return beats


async def breaker_records(js: JetStreamContext, config: Config) -> dict[str, BreakerRecord]:
    records = {}
    kv = await js.key_value(bucket(config.nats.subject_prefix, BREAKERS))
    for value in await _entries(kv):
        try:
            record = record_decoder.decode(value)
        except msgspec.DecodeError:
            continue
        records[record.deployment] = record
    return records


def _stats_by_deployment(beats: list[WorkerBeat]) -> dict[str, list[DeploymentStats]]:
    stats: dict[str, list[DeploymentStats]] = {}
    for beat in beats:
        for deployment in beat.deployments:
            stats.setdefault(deployment.name, []).append(deployment)
    return stats


async def breakers_view(js: JetStreamContext, config: Config) -> list[BreakerView]:
    records = await breaker_records(js, config)
    stats = _stats_by_deployment(await live_beats(js, config))
    views = []
    for model in config.model_list:
        for deployment in model.deployments:
            record = records.get(deployment.name) or BreakerRecord(deployment=deployment.name)
            seen = stats.get(deployment.name, [])
            views.append(
                BreakerView(
                    deployment=deployment.name,
                    model=model.model_name,
                    state=record.state.value,
                    since=record.since,
                    reason=record.reason,
                    forced=record.forced,
                    owner=record.owner,
                    requests=sum(s.requests for s in seen),
                    failures=sum(s.failures for s in seen),
                    error_rate=max((s.error_rate for s in seen), default=0.0),
                )
            )
    return views


async def deployments_view(
    js: JetStreamContext,
    config: Config,
    subjects: Subjects,
    beats: list[WorkerBeat] | None = None,
) -> list[DeploymentView]:
    """Every deployment's view; ``beats``: the live beats, if the caller read them."""
    records = await breaker_records(js, config)
    beats = await live_beats(js, config) if beats is None else beats
    stats = _stats_by_deployment(beats)
    as_of: dict[str, float] = {}
    for beat in beats:
        for stat in beat.deployments:
            as_of[stat.name] = max(as_of.get(stat.name, 0.0), beat.ts)
    views = []
    for model in config.model_list:
        try:
            consumer = subjects.queue_consumer(model.model_name, model.mode)
            info = await js.consumer_info(subjects.stream, consumer)
            queued: int | None = info.num_pending
        except NotFoundError:
            queued = None  # no worker ever served it
        for deployment in model.deployments:
            seen = stats.get(deployment.name, [])
            latencies = [s.latency_ewma_ms for s in seen if s.latency_ewma_ms is not None]
            latency = round(sum(latencies) / len(latencies), 3) if latencies else None
            record = records.get(deployment.name)
            views.append(
                DeploymentView(
                    deployment=deployment.name,
                    model=model.model_name,
                    provider=deployment.provider,
                    max_concurrency=deployment.max_concurrency,
                    workers=len(seen),
                    inflight=sum(s.inflight for s in seen),
                    queued=queued,
                    latency_ewma_ms=latency,
                    error_rate=max((s.error_rate for s in seen), default=0.0),
                    requests=sum(s.requests for s in seen),
                    failures=sum(s.failures for s in seen),
                    retries=sum(s.retries for s in seen),
                    failovers=sum(s.failovers for s in seen),
                    breaker=record.state.value if record else BreakerState.CLOSED.value,
                    cost_usd=round(sum(s.cost_usd for s in seen), 6),
                    as_of=as_of.get(deployment.name),
                )
            )
    return views


async def set_breaker(
    js: JetStreamContext, config: Config, deployment: str, action: Literal["open", "close"]
) -> BreakerRecord:
    """Force a breaker open (it stays open until closed by an operator) or close/reset it."""
    known = {d.name for m in config.model_list for d in m.deployments}
    if deployment not in known:
        raise NotFound(404, f"No deployment named `{deployment}`.", code="deployment_not_found")
    record = BreakerRecord(
        deployment=deployment,
        state=BreakerState.OPEN if action == "open" else BreakerState.CLOSED,
        since=time.time(),
        reason=f"{'forced open' if action == 'open' else 'reset'} by an operator",
        forced=action == "open",
    )
    kv = await js.key_value(bucket(config.nats.subject_prefix, BREAKERS))
    await kv.put(breaker_key(deployment), _encoder.encode(record))
    return record
