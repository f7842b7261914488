"""``promptbus status``: the admin views as a terminal table."""

from __future__ import annotations

import asyncio
import sys
import time

from broker.nats.connection import connect
from broker.nats.credentials import Role, login_for
from broker.nats.provision import StreamKind, ensure_bucket, ensure_stream
from broker.nats.subjects import BREAKERS, WORKERS, Subjects
from broker.routing import views
from broker.telemetry.charts import Chart, chart
from broker.telemetry.series import Series
from schemas.config import Config

COLUMNS = (
    ("MODEL", "model"),
    ("DEPLOYMENT", "deployment"),
    ("WORKERS", "workers"),
    ("INFLIGHT", "inflight"),
    ("CAP", "max_concurrency"),
    ("QUEUED", "queued"),
    ("LAT_MS", "latency_ewma_ms"),
    ("ERR%", "error_rate"),
    ("REQS", "requests"),
    ("FAILS", "failures"),
    ("RETRIES", "retries"),
    ("FAILOVERS", "failovers"),
    ("BREAKER", "breaker"),
)


def _cell(field: str, value: object) -> str:
    if value is None:
        return "-"
    if field == "error_rate" and isinstance(value, float):
        return f"{value * 100:.1f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def render(views: list[views.DeploymentView]) -> str:
    rows = [[title for title, _ in COLUMNS]]
    for view in views:
        rows.append([_cell(field, getattr(view, field)) for _, field in COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


BLOCKS = "▁▂▃▄▅▆▇█"
SPARK_MINUTES, SPARK_STEP_S = 10, 20  # 30 points: ten minutes in a terminal line


def sparkline(values: list[float | None]) -> str:
    """Values as block characters scaled to their own maximum; a gap is a space."""
    known = [v for v in values if v is not None]
    top = max(known, default=0.0)
    if top <= 0:
        return "".join(" " if v is None else BLOCKS[0] for v in values)
    return "".join(
        " " if v is None else BLOCKS[min(len(BLOCKS) - 1, int(v / top * (len(BLOCKS) - 1) + 0.5))]
        for v in values
    )


def _last(values: list[float | None]) -> float | None:
    return next((v for v in reversed(values) if v is not None), None)


def trends(drawn: Chart) -> str:
    """Per model: requests/s and p95 latency over the last minutes, with their latest."""
    lines = [f"last {SPARK_MINUTES} min, every {drawn.step_s} s"]
    width = max((len(name) for name in drawn.groups), default=5)
    for name in sorted(drawn.groups):
        values = drawn.groups[name]
        rate, p95 = values["requests_per_s"], values["latency_p95_ms"]
        if not any(rate):
            continue
        now_rate, now_p95 = _last(rate), _last(p95)
        lines.append(
            f"{name.ljust(width)}  req/s {sparkline(rate)} {now_rate or 0:6.1f}"
            f"   p95 {sparkline(p95)} " + ("-" if now_p95 is None else f"{now_p95:.0f} ms")
        )
    return "\n".join(lines) if len(lines) > 1 else lines[0] + ": no traffic"


async def show(config: Config, url: str, watch: float | None) -> None:
    nc = await connect(url, "promptbus-status", login_for(config, Role.ADMIN))
    try:
        js = nc.jetstream()
        await ensure_bucket(js, config, WORKERS)
        await ensure_bucket(js, config, BREAKERS)
        subjects = Subjects.of(config)
        series = None
        if watch is not None and config.telemetry.enabled:
            series = Series(SPARK_MINUTES * 60)
            await ensure_stream(js, config, subjects, StreamKind.TELEMETRY)
            await series.follow(js, subjects)  # every process's telemetry, for sparklines
        while True:
            table = render(await views.deployments_view(js, config, subjects))
            if watch is None:
                print(table)
                return
            stamp = time.strftime("%H:%M:%S")
            lines = ""
            if series is not None:
                now = time.time()
                lines = trends(chart(series, now, minutes=SPARK_MINUTES, step_s=SPARK_STEP_S))
            sys.stdout.write(
                f"\x1b[2J\x1b[H{stamp}  every {watch:g}s, Ctrl-C to stop\n{table}\n\n{lines}\n"
            )
            sys.stdout.flush()
            await asyncio.sleep(watch)
    finally:
        if series is not None:
            await series.stop()
        await nc.close()
