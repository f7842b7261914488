"""Alert rules, the alerts they raise and their history (broker/alerts/).

A rule compares one metric of the last ``window`` with a threshold; held for ``for``,
it fires. Rules come from ``alerts.rules`` in promptbus.yaml and from the admin API and
CLI (kept in NATS); the budget warnings are rules made for every budget.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct, field

Severity = Literal["info", "warning", "critical"]
SEVERITIES: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}
Operator = Literal[">", "<", ">=", "<=", "==", "!="]
Label = Literal["model", "deployment", "tenant"]
AlertStatus = Literal["pending", "firing", "resolved"]

# What a rule can watch; docs/alerts.md says how each is computed.
METRICS: dict[str, str] = {
    "requests_per_s": "requests answered per second",
    "error_rate": "share of requests answered with a status >= 400 (0-1)",
    "5xx_rate": "share of requests answered with a 5xx (0-1)",
    "latency_p50_ms": "median latency, ms",
    "latency_p95_ms": "95th percentile latency, ms",
    "latency_p99_ms": "99th percentile latency, ms",
    "queue_depth": "requests waiting in JetStream queues",
    "queue_wait_p95_ms": "95th percentile of the time requests waited in the queue, ms",
    "breaker_open": "deployments whose circuit breaker is open",
    "cost_per_hour_usd": "spend per hour at the window's rate, USD",
    "tokens_per_s": "prompt and completion tokens per second",
    "rate_limited_per_min": "requests refused with a 429 per minute",
    "worker_count": "live worker processes",
    "budget_used_pct": "spend of a budget in its current period, % of its limit",
    "quota_used_pct": "tokens of a quota in its current period, % of its limit",
}
Metric = Literal[
    "requests_per_s",
    "error_rate",
    "5xx_rate",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "queue_depth",
    "queue_wait_p95_ms",
    "breaker_open",
    "cost_per_hour_usd",
    "tokens_per_s",
    "rate_limited_per_min",
    "worker_count",
    "budget_used_pct",
    "quota_used_pct",
]
RULE_NAME = r"^[A-Za-z0-9_-]{1,64}$"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def seconds(value: str | float) -> float:
    """``2m``, ``30s``, ``1h``, ``500ms`` or a number of seconds."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value}")
        return float(value)
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"not a duration: `{value}` (use e.g. 30s, 2m, 1h)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


class AlertRule(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """``metric op threshold`` over the last ``window``, held for ``for``."""

    name: Annotated[str, Meta(pattern=RULE_NAME)]
    metric: Metric
    op: Operator
    threshold: float
    for_: str | float = field(default=0.0, name="for")
    window: str | float = "1m"
    severity: Severity = "warning"
    labels: dict[Label, str] = {}  # only what matches these (model, deployment, tenant)
    group_by: list[Label] = []  # one alert per value of these labels
    description: str = ""

    def __post_init__(self) -> None:
        try:
            for_s, window_s = seconds(self.for_), seconds(self.window)
        except ValueError as exc:
            raise msgspec.ValidationError(f"rule `{self.name}`: {exc}") from None
        if not 1 <= window_s <= 3600:
            raise msgspec.ValidationError(
                f"rule `{self.name}`: window must be 1s to 1h (the kept telemetry)"
            )
        if for_s > 86400:
            raise msgspec.ValidationError(f"rule `{self.name}`: `for` must be at most 1 day")

    @property
    def for_s(self) -> float:
        return seconds(self.for_)

    @property
    def window_s(self) -> float:
        return seconds(self.window)

    @property
    def filters(self) -> dict[str, str]:
        """``labels`` as plain strings: what the rule watches."""
        return {str(k): v for k, v in self.labels.items()}


def holds(value: float, op: str, threshold: float) -> bool:
    if op == ">":
        return value > threshold
    if op == "<":
        return value < threshold
    if op == ">=":
        return value >= threshold
    if op == "<=":
        return value <= threshold
    if op == "==":
        return value == threshold
    return value != threshold


class Alert(Struct, kw_only=True, omit_defaults=True):
    """One rule's alert for one set of label values, while it is pending or firing."""

    id: str
    rule: str
    metric: str
    op: str
    threshold: float
    severity: Severity
    labels: dict[str, str]
    status: AlertStatus
    value: float | None
    started_at: float  # since when the condition holds
    fired_at: float | None = None
    resolved_at: float | None = None
    acked_by: str | None = None
    acked_at: float | None = None
    notified_at: float | None = None  # the last notification of it firing
    description: str = ""

    @property
    def summary(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        value = "no data" if self.value is None else f"{self.value:.4g}"
        text = f"{self.rule}: {self.metric} {value} {self.op} {self.threshold:g}"
        return f"{text} ({where})" if where else text


AlertEventKind = Literal["pending", "firing", "resolved", "acknowledged"]


class AlertEvent(Struct, kw_only=True):
    """One step of an alert's life, kept in the ``<STREAM>_ALERTS`` stream."""

    at: float
    kind: AlertEventKind
    alert: Alert


class AckRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    by: Annotated[str, Meta(min_length=1, max_length=200)] = "operator"


alert_encoder = msgspec.json.Encoder()
alert_decoder = msgspec.json.Decoder(Alert)
event_decoder = msgspec.json.Decoder(AlertEvent)
rule_decoder = msgspec.json.Decoder(AlertRule)
