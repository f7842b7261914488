"""Telemetry reports: what each process counted over a few seconds, published to the
``<STREAM>_TELEMETRY`` stream (``<prefix>.telemetry.<process>``) for the dashboard's
charts and the alert rules (broker/telemetry/). Numbers and names only: no prompts."""

from __future__ import annotations

import msgspec
from msgspec import Struct


class TelemetryRow(Struct, array_like=True):
    """Counts of one (source, model, deployment, tenant) over a report's interval.
    source: ``i`` what an ingress answered, ``w`` what a worker served, ``g`` gauges
    sampled by the alert evaluator (their values are levels, not increments)."""

    source: str
    model: str
    deployment: str
    tenant: str
    counts: dict[str, int]


class TelemetryReport(Struct, kw_only=True):
    process: str
    at: float  # Unix time the interval ended
    rows: list[TelemetryRow]


report_encoder = msgspec.json.Encoder()
report_decoder = msgspec.json.Decoder(TelemetryReport)
