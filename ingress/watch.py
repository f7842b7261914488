"""What an ingress runs to watch the broker: its telemetry (reported to NATS), the hour
of every process's telemetry it follows (the dashboard's charts), and an alert
evaluator (active in one ingress at a time: a lease)."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from broker.alerts.engine import AlertEngine
from broker.alerts.store import AlertStore
from broker.client import BrokerClient
from broker.nats.provision import StreamKind, ensure_bucket, ensure_stream
from broker.nats.subjects import ALERTS, Subjects
from broker.telemetry.counts import Telemetry
from broker.telemetry.reporter import TelemetryReporter
from broker.telemetry.series import Series
from broker.tenancy.admission import Admission
from schemas.config import Config


@dataclass(slots=True)
class Watch:
    telemetry: Telemetry | None  # None: telemetry.enabled is false
    series: Series | None
    alerts: AlertStore
    reporter: TelemetryReporter | None = None
    engine: AlertEngine | None = None  # None: alerts.enabled is false

    @classmethod
    async def open(cls, config: Config, client: BrokerClient, admission: Admission) -> Watch:
        js, subjects = client.js, Subjects.of(config)
        await ensure_stream(js, config, subjects, StreamKind.ALERTS)
        kv = await ensure_bucket(js, config, ALERTS)
        watch = cls(None, None, AlertStore(js, kv, subjects))
        if config.telemetry.enabled:
            await ensure_stream(js, config, subjects, StreamKind.TELEMETRY)
            process = f"ingress-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            watch.telemetry = Telemetry()
            watch.reporter = TelemetryReporter(
                js, subjects, process, watch.telemetry, config.telemetry.report_every_s
            )
            watch.series = Series(min(config.telemetry.retention_s, 3600.0))
            await watch.series.follow(js, subjects)
            watch.reporter.start()
        if config.alerts.enabled:
            watch.engine = AlertEngine(
                js,
                kv,
                config,
                watch.series or Series(),
                reporter=watch.reporter,
                admission=admission,
            )
            watch.engine.start()
        return watch

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
        if self.reporter is not None:
            await self.reporter.stop()
        if self.series is not None:
            await self.series.stop()
