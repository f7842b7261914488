"""broker/experiments/canary.py and stats.py: the verdict on a canary, its steps, and
the percentiles it is judged by."""

from __future__ import annotations

from broker.experiments.canary import advanced, verdict
from broker.experiments.stats import BUCKETS_MS, report_of
from broker.telemetry.histogram import percentile
from schemas.config import CanaryConfig, ExperimentConfig
from schemas.experiments import VariantReport

CANARY = CanaryConfig(variant="new", steps=[10, 50, 100], step_s=60, min_requests=20)
EXPERIMENT = ExperimentConfig(name="c", model="m", variants={"old": 1, "new": 1}, canary=CANARY)


def test_too_few_requests_are_not_judged() -> None:
    bad = VariantReport(variant="new", requests=19, errors=19, error_rate=1.0)
    assert verdict(CANARY, bad, VariantReport(variant="old", requests=100)) is None


def test_errors_or_latency_above_the_margin_roll_back() -> None:
    old = VariantReport(variant="old", requests=100, errors=1, error_rate=0.01, p95_ms=400)
    fine = VariantReport(variant="new", requests=40, errors=2, error_rate=0.05, p95_ms=590)
    assert verdict(CANARY, fine, old) is None  # 5% <= 1% + 5%, 590 <= 400 * 1.5
    failing = VariantReport(variant="new", requests=40, errors=4, error_rate=0.1, p95_ms=300)
    assert "error rate 10.0%" in (verdict(CANARY, failing, old) or "")
    slow = VariantReport(variant="new", requests=40, error_rate=0.0, p95_ms=700)
    assert "p95 latency 700 ms" in (verdict(CANARY, slow, old) or "")


def test_steps_follow_the_schedule_then_complete_and_a_rollback_is_final() -> None:
    state = advanced(EXPERIMENT, None, 1000.0, None)
    assert state is not None and [e.kind for e in state.events] == ["started"]
    assert advanced(EXPERIMENT, state, 1059.0, None) is None  # not yet
    state = advanced(EXPERIMENT, state, 1060.0, None)
    assert state is not None and state.step == 1 and state.events[-1].share == 50
    state = advanced(EXPERIMENT, state, 1120.0, None)
    state = advanced(EXPERIMENT, state, 1180.0, None) if state else None
    assert state is not None and state.completed_at == 1180.0
    assert [e.kind for e in state.events] == ["started", "step", "step", "completed"]
    assert advanced(EXPERIMENT, state, 9999.0, "worse") is None  # done is done

    trial = advanced(EXPERIMENT, None, 0.0, None)
    rolled = advanced(EXPERIMENT, trial, 1.0, "error rate too high")
    assert rolled is not None and rolled.rolled_back_at == 1.0 and rolled.events[-1].share == 0
    assert advanced(EXPERIMENT, rolled, 500.0, None) is None


def test_percentiles_interpolate_within_buckets() -> None:
    histogram = [0] * (len(BUCKETS_MS) + 1)
    histogram[BUCKETS_MS.index(100)] = 100  # 100 requests between 50 and 100 ms
    assert percentile(histogram, 0.5, BUCKETS_MS) == 75.0
    assert percentile(histogram, 0.95, BUCKETS_MS) == 97.5
    assert percentile([0] * len(histogram), 0.5, BUCKETS_MS) is None
    report = report_of("v", {"requests": 100, "errors": 5, "l3": 100, "ms": 7500, "cost": 10**9})
    assert report.error_rate == 0.05 and report.mean_ms == 75.0
    assert report.cost_usd == 1.0 and report.cost_per_request_usd == 0.01
