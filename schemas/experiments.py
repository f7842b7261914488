"""Experiments' shared state and reports: what the experiments KV bucket holds per
canary (``<prefix>_experiments``, key = the experiment's name), and what
``GET /admin/experiments/{name}`` and ``promptbus experiments report`` show."""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct

EventKind = Literal["started", "step", "rolled_back", "completed"]


class CanaryEvent(Struct, kw_only=True, omit_defaults=True):
    at: float  # Unix time
    kind: EventKind
    share: int  # the canary's percentage of the traffic from then on
    detail: str = ""


class CanaryState(Struct, kw_only=True, omit_defaults=True):
    step: int = 0  # index into the canary's steps
    started_at: float = 0.0
    stepped_at: float = 0.0
    rolled_back_at: float | None = None
    completed_at: float | None = None
    reason: str = ""  # why it was rolled back
    events: list[CanaryEvent] = msgspec.field(default_factory=list)


class VariantReport(Struct, kw_only=True):
    """One variant's requests over a span of minutes, from every ingress."""

    variant: str
    requests: int = 0
    errors: int = 0  # answered 5xx: the variant's failures, not the callers'
    error_rate: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cost_per_request_usd: float = 0.0


class ExperimentView(Struct, kw_only=True):
    name: str
    model: str
    sticky: str
    shares: dict[str, int]  # variant -> current percentage (weights scaled to 100)
    canary: CanaryState | None = None
    report: list[VariantReport] | None = None


canary_decoder = msgspec.json.Decoder(CanaryState)
