"""Levels the alert evaluator samples each round, reported as gauge rows so that charts
and rules on every process see them: requests queued per model, open breakers per
deployment, live worker processes per model and in all (model ``*``)."""

from __future__ import annotations

from nats.js import JetStreamContext

from broker.nats.subjects import Subjects
from broker.routing.views import deployments_view, live_beats
from broker.telemetry.counts import GAUGE
from schemas.config import Config
from schemas.state import BreakerState
from schemas.telemetry import TelemetryRow


async def sample(js: JetStreamContext, config: Config, subjects: Subjects) -> list[TelemetryRow]:
    beats = await live_beats(js, config)
    views = await deployments_view(js, config, subjects, beats)
    by_model: dict[str, set[str]] = {}
    for beat in beats:
        by_model.setdefault(beat.model, set()).add(beat.worker_id)
    rows = [TelemetryRow(GAUGE, "*", "", "", {"workers": len({b.worker_id for b in beats})})]
    queued: dict[str, int] = {}
    for view in views:
        opened = int(view.breaker == BreakerState.OPEN.value)
        rows.append(TelemetryRow(GAUGE, view.model, view.deployment, "", {"open": opened}))
        queued[view.model] = view.queued or 0
    for model, count in queued.items():
        workers = len(by_model.get(model, ()))
        rows.append(TelemetryRow(GAUGE, model, "", "", {"queued": count, "workers": workers}))
    return rows
