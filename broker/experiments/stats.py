"""Each variant's requests, errors, latency and spend, counted in NATS by every ingress.

An ingress adds what it answered to JetStream counters in the usage stream, one per
variant, minute and metric (``<prefix>.usage.x.<experiment>.<variant>.<minute>.<metric>``),
in batches with the usage recorder's flush: no I/O on the request path. Latency goes
into fixed histogram buckets, so percentiles of any span of minutes can be read back by
any process, for ``promptbus experiments report`` and for judging canaries.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict

from nats.js import JetStreamContext

from broker.nats.subjects import Subjects, name_token
from broker.telemetry.histogram import percentile
from broker.tenancy.usage import NANO, UsageRecorder, counter_value
from schemas.experiments import VariantReport

# upper bounds of the latency buckets, in milliseconds; one more counts what is slower
# (their own, not telemetry's: the counters kept in NATS are numbered by these)
BUCKETS_MS = (25, 50, 100, 250, 500, 750, 1000, 1500, 2500, 5000, 10000, 30000, 60000)


def minute_of(at: float) -> int:
    return int(at // 60)


class VariantStats:
    """Counts of answered requests, added to the usage recorder's next batch."""

    def __init__(self, recorder: UsageRecorder, subjects: Subjects) -> None:
        self._recorder = recorder
        self._subjects = subjects

    def observe(
        self,
        experiment: str,
        variant: str,
        status: int,
        latency_s: float,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost_nano: int = 0,
    ) -> None:
        counter = self._subjects.experiment_counter
        minute = minute_of(time.time())
        ms = latency_s * 1000
        bucket = bisect.bisect_left(BUCKETS_MS, ms)
        increments = {
            counter(experiment, variant, minute, "requests"): 1,
            counter(experiment, variant, minute, f"l{bucket}"): 1,
            counter(experiment, variant, minute, "ms"): round(ms),
        }
        if status >= 500:
            increments[counter(experiment, variant, minute, "errors")] = 1
        if prompt_tokens:
            increments[counter(experiment, variant, minute, "prompt")] = prompt_tokens
        if completion_tokens:
            increments[counter(experiment, variant, minute, "completion")] = completion_tokens
        if cost_nano:
            increments[counter(experiment, variant, minute, "cost")] = cost_nano
        self._recorder.add_counts(increments)


async def read(
    js: JetStreamContext,
    subjects: Subjects,
    experiment: str,
    variants: list[str],
    since: float | None = None,
) -> dict[str, VariantReport]:
    """Each variant's totals from minute ``since`` on (None: all that is kept)."""
    stream = subjects.usage_stream
    info = await js.stream_info(stream, subjects_filter=subjects.experiment_counters(experiment))
    names = (info.state.subjects or {}) if info.state else {}
    first = minute_of(since) if since is not None else None
    tokens = {name_token(v): v for v in variants}
    totals: dict[str, dict[str, int]] = {v: defaultdict(int) for v in variants}
    for subject in sorted(names):
        parts = subject.split(".")
        variant, minute, metric = tokens.get(parts[-3]), int(parts[-2]), parts[-1]
        if variant is None or (first is not None and minute < first):
            continue
        msg = await js.get_last_msg(stream, subject, direct=True)
        totals[variant][metric] += counter_value(msg.data)
    return {v: report_of(v, counts) for v, counts in totals.items()}


def report_of(variant: str, counts: dict[str, int]) -> VariantReport:
    requests = counts.get("requests", 0)
    errors = counts.get("errors", 0)
    histogram = [counts.get(f"l{i}", 0) for i in range(len(BUCKETS_MS) + 1)]
    cost = counts.get("cost", 0) / NANO
    return VariantReport(
        variant=variant,
        requests=requests,
        errors=errors,
        error_rate=errors / requests if requests else 0.0,
        p50_ms=percentile(histogram, 0.50, BUCKETS_MS),
        p95_ms=percentile(histogram, 0.95, BUCKETS_MS),
        p99_ms=percentile(histogram, 0.99, BUCKETS_MS),
        mean_ms=counts.get("ms", 0) / requests if requests else None,
        prompt_tokens=counts.get("prompt", 0),
        completion_tokens=counts.get("completion", 0),
        cost_usd=cost,
        cost_per_request_usd=cost / requests if requests else 0.0,
    )
