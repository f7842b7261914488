"""``promptbus status --watch``'s sparklines: ten minutes of every process's telemetry
per model, scaled to their own maximum."""

from __future__ import annotations

from broker.telemetry.charts import chart
from broker.telemetry.counts import INGRESS, Telemetry
from broker.telemetry.series import SLOT_S, Series
from cli.status import SPARK_MINUTES, SPARK_STEP_S, sparkline, trends
from schemas.telemetry import TelemetryReport


def test_sparklines_scale_to_their_maximum_and_show_gaps() -> None:
    assert sparkline([0, 1, 2, None, 4]) == "▁▃▅ █"
    assert sparkline([None, 0, 0]) == " ▁▁"
    assert sparkline([]) == ""


def test_trends_show_each_model_with_traffic() -> None:
    series = Series(SPARK_MINUTES * 60)
    now = (1_800_000_000 // SLOT_S) * SLOT_S + 5.0
    for minute in range(5):  # one request a second, rising latency, for five minutes
        telemetry = Telemetry()
        for _ in range(60):
            telemetry.observe(INGRESS, "gpt", "", "", 200, 0.01 * (minute + 1))
        telemetry.observe(INGRESS, "idle", "", "", 200, 0.01)
        at = now - (4 - minute) * 60
        series.add(TelemetryReport(process="p", at=at, rows=telemetry.take()))
    text = trends(chart(series, now, minutes=SPARK_MINUTES, step_s=SPARK_STEP_S))
    header, gpt, idle = text.splitlines()
    assert header == f"last {SPARK_MINUTES} min, every {SPARK_STEP_S} s"
    rate, p95 = gpt.split("req/s", 1)[1].split("p95")
    assert gpt.startswith("gpt ") and rate.strip()[0] in "▅▆▇" and "█" in rate
    assert p95.split().index("▂") < p95.split().index("█")  # latency rose
    assert 40 <= float(p95.split()[-2]) <= 50  # the latest: the last minute's 50 ms
    assert idle.startswith("idle")
    assert trends(chart(Series(), now)).endswith("no traffic")
