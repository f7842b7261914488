"""Time series for the dashboard: the series metrics per step over the last minutes,
per model or deployment, and the errors by status code. Read from a ``Series``, so
every ingress draws the same charts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import msgspec

from broker.telemetry import measures
from broker.telemetry.series import SLOT_S, Series

CHARTED = (
    "requests_per_s",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "error_rate",
    "queue_depth",
    "queue_wait_p95_ms",
    "tokens_per_s",
    "cost_per_hour_usd",
)


class Chart(msgspec.Struct, kw_only=True):
    step_s: int
    times: list[float]  # each step's start, Unix time
    by: str  # model or deployment
    groups: dict[str, dict[str, list[float | None]]]  # group -> metric -> one per step
    errors: dict[str, list[int]]  # status code (>= 400) -> count per step


def chart(
    series: Series,
    now: float,
    *,
    minutes: float = 60,
    step_s: int = 60,
    by: str = "model",
    labels: Mapping[str, str] | None = None,
) -> Chart:
    step_s = max(SLOT_S, step_s - step_s % SLOT_S)
    end = (now // SLOT_S + 1) * SLOT_S  # the end of the current slot
    steps = max(1, int(minutes * 60 // step_s))
    times = [end - (steps - i) * step_s for i in range(steps)]
    groups: dict[str, dict[str, list[float | None]]] = defaultdict(
        lambda: {m: [None] * steps for m in CHARTED}
    )
    errors: dict[str, list[int]] = defaultdict(lambda: [0] * steps)
    by_deployment = by == "deployment"
    for index, start in enumerate(times):
        span = min(step_s, now - start) if start + step_s > now else step_s
        for group, window in series.window(start, start + step_s, labels, (by,)).items():
            name = group[0][1] if group else ""
            if not name or name == "*":
                continue
            values = groups[name]
            for metric in CHARTED:
                values[metric][index] = measures.value(
                    metric, window, max(span, 1.0), by_deployment=by_deployment, by_model=True
                )
            for key, count in measures.answered(window, by_deployment).items():
                if key.startswith("c") and key[1:2] in ("4", "5"):
                    errors[key[1:]][index] += count
    return Chart(step_s=step_s, times=times, by=by, groups=dict(groups), errors=dict(errors))
