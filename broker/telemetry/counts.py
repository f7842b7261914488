"""A process's telemetry between two reports: plain dict increments on the request path,
taken and published every few seconds by the reporter (broker/telemetry/reporter.py).

Counter names in a row: ``n`` requests, ``c<status>`` requests by status, ``l<i>``
latency histogram (broker/telemetry/histogram.py), ``ms`` latency sum, ``w<i>`` queue
wait histogram, ``p``/``o`` prompt/completion tokens, ``usd`` cost in nano-USD.
"""

from __future__ import annotations

from collections import defaultdict

from broker.observability import otel
from broker.telemetry.histogram import bucket_of
from schemas.telemetry import TelemetryRow

NANO = 1_000_000_000
INGRESS, WORKER, GAUGE = "i", "w", "g"

RowKey = tuple[str, str, str, str]  # source, model, deployment, tenant


class Telemetry:
    """Counts per (source, model, deployment, tenant) since the last ``take``."""

    def __init__(self) -> None:
        self._rows: dict[RowKey, dict[str, int]] = {}

    def observe(
        self,
        source: str,
        model: str,
        deployment: str,
        tenant: str,
        status: int,
        latency_s: float | None,
        *,
        wait_s: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost_usd: float = 0.0,
    ) -> None:
        key = (source, model, deployment, tenant)
        counts = self._rows.get(key)
        if counts is None:
            counts = self._rows[key] = defaultdict(int)
        counts["n"] += 1
        counts[f"c{status}"] += 1
        if latency_s is not None:
            ms = latency_s * 1000
            counts[f"l{bucket_of(ms)}"] += 1
            counts["ms"] += round(ms)
        if wait_s is not None:
            counts[f"w{bucket_of(wait_s * 1000)}"] += 1
        if prompt_tokens:
            counts["p"] += prompt_tokens
        if completion_tokens:
            counts["o"] += completion_tokens
        if cost_usd:
            counts["usd"] += round(cost_usd * NANO)
        if otel.enabled():  # the same request as OTLP metrics
            tokens = prompt_tokens + completion_tokens
            otel.record_request(
                source, model, deployment, status, latency_s, wait_s, tokens, cost_usd
            )

    def take(self) -> list[TelemetryRow]:
        """The rows counted since the last call, and a fresh start."""
        rows, self._rows = self._rows, {}
        return [TelemetryRow(*key, dict(counts)) for key, counts in rows.items()]
