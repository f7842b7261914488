"""``promptbus status``: the admin views as a terminal table."""

from __future__ import annotations

import asyncio
import sys
import time

from broker.nats.connection import connect
from broker.nats.credentials import Role, login_for
from broker.nats.provision import ensure_bucket
from broker.nats.subjects import BREAKERS, WORKERS, Subjects
from broker.routing import views
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


async def show(config: Config, url: str, watch: float | None) -> None:
    nc = await connect(url, "promptbus-status", login_for(config, Role.ADMIN))
    try:
        js = nc.jetstream()
        await ensure_bucket(js, config, WORKERS)
        await ensure_bucket(js, config, BREAKERS)
        subjects = Subjects.of(config)
        while True:
            table = render(await views.deployments_view(js, config, subjects))
            if watch is None:
                print(table)
                return
            stamp = time.strftime("%H:%M:%S")
            sys.stdout.write(f"\x1b[2J\x1b[H{stamp}  every {watch:g}s, Ctrl-C to stop\n{table}\n")
            sys.stdout.flush()
            await asyncio.sleep(watch)
    finally:
        await nc.close()
