"""The metrics alert rules and charts read, computed from a telemetry ``Window``.

Requests, errors and latency are what callers saw at the ingress, unless the question
names a deployment: then what the workers saw (the ingress does not know which
deployment a failure would have gone to). A broker used over NATS only has no ingress
counts, and falls back to the workers'. Queue wait, tokens and cost are the workers';
queue depth, open breakers and workers are gauges the alert evaluator samples.
"""

from __future__ import annotations

from collections.abc import Mapping

from broker.telemetry.counts import GAUGE, INGRESS, NANO, WORKER
from broker.telemetry.histogram import BUCKETS_MS, percentile
from broker.telemetry.series import Window

_QUANTILES = {"latency_p50_ms": 0.50, "latency_p95_ms": 0.95, "latency_p99_ms": 0.99}


def _histogram(counts: Mapping[str, int], prefix: str) -> list[int]:
    return [counts.get(f"{prefix}{i}", 0) for i in range(len(BUCKETS_MS) + 1)]


def _statuses(counts: Mapping[str, int], first: str) -> int:
    return sum(v for k, v in counts.items() if k.startswith("c") and k[1:2] >= first)


def answered(window: Window, by_deployment: bool) -> Mapping[str, int]:
    """The counts requests, errors and latency are read from (see the module's doc)."""
    if not by_deployment and window.counts.get(INGRESS):
        return window.counts[INGRESS]
    return window.counts.get(WORKER, {})


def _gauge(window: Window, name: str, overall: bool) -> float | None:
    """A gauge summed over the window's rows; worker counts of all models come from the
    row that counts each process once (model ``*``) unless a model was asked for."""
    rows = [
        levels
        for key, levels in window.gauges.items()
        if key[0] == GAUGE and name in levels and (key[1] == "*") == (overall and name == "workers")
    ]
    if not rows:
        return None
    return float(sum(levels[name] for levels in rows))


def value(
    metric: str, window: Window, span_s: float, *, by_deployment: bool, by_model: bool
) -> float | None:
    """``metric`` over a window of ``span_s`` seconds; None when there is no data for it
    (an error rate of no requests, a percentile of no latencies)."""
    if metric in ("queue_depth", "breaker_open", "worker_count"):
        name = {"queue_depth": "queued", "breaker_open": "open", "worker_count": "workers"}
        return _gauge(window, name[metric], overall=not by_model)
    if metric in ("queue_wait_p95_ms", "cost_per_hour_usd", "tokens_per_s"):
        worked = window.counts.get(WORKER, {})
        if metric == "queue_wait_p95_ms":
            return percentile(_histogram(worked, "w"), 0.95)
        if metric == "cost_per_hour_usd":
            return worked.get("usd", 0) / NANO * 3600 / span_s
        return (worked.get("p", 0) + worked.get("o", 0)) / span_s
    if metric == "rate_limited_per_min":
        return window.counts.get(INGRESS, {}).get("c429", 0) * 60 / span_s
    counts = answered(window, by_deployment)
    requests = counts.get("n", 0)
    if metric == "requests_per_s":
        return requests / span_s
    if metric == "error_rate":
        return _statuses(counts, "4") / requests if requests else None
    if metric == "5xx_rate":
        return _statuses(counts, "5") / requests if requests else None
    if metric in _QUANTILES:
        return percentile(_histogram(counts, "l"), _QUANTILES[metric])
    raise ValueError(f"not a series metric: {metric}")
