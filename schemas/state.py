"""Shared state kept in JetStream KV buckets: worker presence and circuit breakers.

These are wire messages like the others: any process (or a NATS client in another
language) may read them. Keys are NATS-safe tokens of the model or deployment name.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec


class DeploymentStats(msgspec.Struct, kw_only=True):
    """One worker's view of one deployment, as of its last heartbeat."""

    name: str
    capacity: int
    inflight: int
    requests: int = 0  # provider attempts since the worker started
    failures: int = 0
    retries: int = 0
    failovers: int = 0
    error_rate: float = 0.0  # over the breaker window
    latency_ewma_ms: float | None = None
    breaker: str = "closed"
    cost_usd: float = 0.0  # spend through this worker since it started


class WorkerBeat(msgspec.Struct, kw_only=True):
    """Value of ``pb_workers`` key ``<model-token>.<worker-id>``."""

    worker_id: str
    model: str
    deployments: list[DeploymentStats]
    capacity: int = 0
    inflight: int = 0
    ts: float = 0.0
    # Set when this worker was asked to serve the model and cannot (e.g. every deployment's
    # key variable is unset): the reason, shown in the 503 callers get. Not a server.
    unavailable: str | None = None


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerRecord(msgspec.Struct, kw_only=True):
    """Value of ``pb_breakers`` key ``<deployment-token>``: the shared part of a breaker."""

    deployment: str
    state: BreakerState = BreakerState.CLOSED
    since: float = 0.0  # Unix time of the last transition
    reason: str = ""
    owner: str = ""  # half-open: the worker running the probes
    forced: bool = False  # set by an operator; cleared only by an operator


beat_decoder = msgspec.json.Decoder(WorkerBeat)
record_decoder = msgspec.json.Decoder(BreakerRecord)
