"""Publishes a process's telemetry every ``telemetry.report_every_s``: one JetStream
message of rows per interval (none while idle), never on the request path."""

from __future__ import annotations

import asyncio
import logging
import time

from nats.js import JetStreamContext

from broker.nats.subjects import Subjects
from broker.nats.tasks import cancel_and_wait
from broker.telemetry.counts import Telemetry
from schemas.telemetry import TelemetryReport, TelemetryRow, report_encoder

log = logging.getLogger(__name__)


class TelemetryReporter:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        process: str,
        telemetry: Telemetry,
        every_s: float,
    ) -> None:
        self._js, self._subject = js, subjects.telemetry(process)
        self._process, self.telemetry, self._every = process, telemetry, every_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self.report()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            await self.report()

    async def report(self, rows: list[TelemetryRow] | None = None, at: float | None = None) -> None:
        """Publish what was counted (or ``rows``); lost, not retried, when NATS is away:
        a few seconds missing from a chart is better than a growing backlog."""
        rows = self.telemetry.take() if rows is None else rows
        if not rows:
            return
        at = time.time() if at is None else at
        report = TelemetryReport(process=self._process, at=at, rows=rows)
        try:
            await self._js.publish(self._subject, report_encoder.encode(report), timeout=5.0)
        except Exception as exc:
            log.warning("telemetry report of %s lost: %s", self._process, exc)
