"""Prometheus metrics of the ingress and the workers: one definition for both.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms, base
units). Each process serves its own registry (the ingress at ``/metrics``, a worker on
``worker.metrics_port``); with ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus-client's
multi-process mode aggregates every process that shares the directory.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

# PROMPTBUS_METRICS=off replaces every metric with a no-op, to measure what they cost.
ENABLED = os.environ.get("PROMPTBUS_METRICS", "on").lower() not in ("off", "0", "false")


class _Off:
    """A metric that records nothing (PROMPTBUS_METRICS=off)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def labels(self, *args: Any, **kwargs: Any) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass

    def collect(self) -> list[Any]:
        return []


Counter: Any = prometheus_client.Counter if ENABLED else _Off
Gauge: Any = prometheus_client.Gauge if ENABLED else _Off
Histogram: Any = prometheus_client.Histogram if ENABLED else _Off

# Latencies of LLM calls span milliseconds to minutes.
# Fine where a gateway's own time lies (1-5 ms), coarse where providers' does.
LATENCY_BUCKETS = (
    *(0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02),
    *(0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)

# ---------------------------------------------------------------- ingress

INGRESS_REQUESTS = Counter(
    "promptbus_ingress_requests_total",
    "HTTP requests answered by the ingress",
    ["model", "status", "stream"],
)
INGRESS_DURATION = Histogram(
    "promptbus_ingress_request_duration_seconds",
    "Time from the request's arrival to its full response (streams: to the first chunk)",
    ["model", "stream"],
    buckets=LATENCY_BUCKETS,
)
EXPERIMENT_REQUESTS = Counter(
    "promptbus_experiment_requests_total",
    "Requests of a split alias, by experiment, the variant that served it and status",
    ["experiment", "variant", "status"],
)
EXPERIMENT_DURATION = Histogram(
    "promptbus_experiment_request_duration_seconds",
    "Ingress latency of a split alias's requests by variant (streams: to the first chunk)",
    ["experiment", "variant"],
    buckets=LATENCY_BUCKETS,
)
INGRESS_INFLIGHT = Gauge(
    "promptbus_ingress_inflight_requests",
    "Requests the ingress is waiting on",
    multiprocess_mode="livesum",
)

# ---------------------------------------------------------------- workers

WORKER_REQUESTS = Counter(
    "promptbus_worker_requests_total",
    "Requests a worker finished, by the status of the answer and lane (interactive|batch)",
    ["model", "deployment", "status", "lane"],
)
QUEUE_WAIT = Histogram(
    "promptbus_queue_wait_seconds",
    "Time a request waited in JetStream before a worker took it",
    ["model", "lane"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_DURATION = Histogram(
    "promptbus_upstream_request_duration_seconds",
    "Duration of successful provider calls (streams: to the first chunk)",
    ["deployment", "stream"],
    buckets=LATENCY_BUCKETS,
)
TOKENS = Counter(
    "promptbus_tokens_total",
    "Tokens reported by providers",
    ["deployment", "direction"],
)
COST = Counter(
    "promptbus_cost_usd_total",
    "Spend from reported usage and the deployments' prices (input/output per million tokens)",
    ["model", "deployment"],
)
CACHE = Counter(
    "promptbus_cache_requests_total",
    "Cacheable requests by outcome of the response cache lookup",
    ["model", "result"],
)
NATS_LOGINS = Counter(
    "promptbus_nats_logins_total",
    "Tenants' NATS logins answered by the auth callout, admitted or refused",
    ["outcome"],
)
ERRORS = Counter(
    "promptbus_errors_total",
    "Failed provider attempts and refused requests, by error code",
    ["deployment", "code"],
)
REFUSED = Counter(
    "promptbus_admission_refused_total",
    "Requests refused at admission: invalid_api_key, model_not_allowed, rate_limit_exceeded, "
    "budget_exceeded, quota_exceeded, ip_rate_limit_exceeded, global_rate_limit_exceeded",
    ["code"],
)
POISON = Counter(
    "promptbus_poison_requests_total",
    "Requests given up after worker.max_deliver unanswered starts (moved to dead letters)",
    ["model"],
)
ABANDONED = Counter(
    "promptbus_abandoned_requests_total",
    "Requests dropped unrun: stored after their publisher had reported them failed",
    ["model"],
)
REDELIVERED_ANSWERED = Counter(
    "promptbus_redelivered_answered_total",
    "Requests redelivered to the worker that had answered them (their ack was lost): acked unrun",
    ["model"],
)
RETRIES = Counter("promptbus_retries_total", "Provider calls retried", ["deployment"])
FAILOVERS = Counter(
    "promptbus_failovers_total", "Requests moved on to another deployment or model", ["deployment"]
)
WORKER_INFLIGHT = Gauge(
    "promptbus_worker_inflight_requests",
    "Requests a worker is running",
    ["deployment"],
    multiprocess_mode="livesum",
)
BREAKER_STATE = Gauge(
    "promptbus_breaker_state",
    "Circuit breaker state: 0 closed, 1 half-open, 2 open",
    ["deployment"],
    multiprocess_mode="max",
)
QUEUED = Gauge(
    "promptbus_queued_requests",
    "Requests waiting in a model's (or routed deployment's) JetStream queue",
    ["queue"],
    multiprocess_mode="max",
)

# ---------------------------------------------------------------- alerts

ALERTS_ACTIVE = Gauge(
    "promptbus_alerts",
    "Alerts pending or firing, by rule, severity and status (set by the evaluator)",
    ["rule", "severity", "status"],
    multiprocess_mode="max",
)
ALERT_NOTIFICATIONS = Counter(
    "promptbus_alert_notifications_total",
    "Alert notifications to webhooks by outcome: sent, failed (after retries), dropped",
    ["webhook", "outcome"],
)


def exposition() -> tuple[bytes, str]:
    """The metrics text and its content type, aggregated across processes if configured."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


class IngressSummary(msgspec.Struct):
    """This ingress process's totals since start, for the dashboard to difference."""

    requests: int
    errors: int  # answered with a 5xx
    latency_buckets: list[tuple[float, int]]  # cumulative (upper bound s, count); +Inf = 1e9


def ingress_summary() -> IngressSummary:
    requests = errors = 0
    for family in INGRESS_REQUESTS.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                requests += int(sample.value)
                if sample.labels.get("status", "").startswith("5"):
                    errors += int(sample.value)
    buckets: dict[float, int] = {}
    for family in INGRESS_DURATION.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                bound = 1e9 if bound == float("inf") else bound
                buckets[bound] = buckets.get(bound, 0) + int(sample.value)
    return IngressSummary(requests, errors, sorted(buckets.items()))
