"""The alert evaluator: every ``alerts.evaluate_every_s``, in whichever process holds
the ``evaluator`` lease (any ingress may), it samples the gauges, measures every rule in
force and moves each alert along: pending while its condition holds for less than the
rule's ``for``, then firing (notified), resolved when the condition no longer holds
(notified); a firing alert nobody acknowledged is notified again every ``repeat_s``.
Each change is a compare-and-set on the alert's entry, so an operator's acknowledgement
made meanwhile is never overwritten, and an event in the alerts stream."""

from __future__ import annotations

import asyncio
import logging
import time

from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker.alerts import budgets
from broker.alerts.notify import Notifier
from broker.alerts.rules import in_force, measure
from broker.alerts.store import AlertStore, alert_id
from broker.nats.lease import KVLease, new_owner
from broker.nats.subjects import Subjects
from broker.nats.tasks import cancel_and_wait
from broker.observability import metrics
from broker.telemetry import gauges
from broker.telemetry.reporter import TelemetryReporter
from broker.telemetry.series import Series
from broker.tenancy.admission import Admission
from schemas.alerts import Alert, AlertEvent, AlertEventKind, AlertRule, holds
from schemas.config import Config
from schemas.telemetry import TelemetryReport

log = logging.getLogger(__name__)

EVALUATOR_KEY = "evaluator"
LEASE_TTL_S = 15.0
_BUDGET_METRICS = ("budget_used_pct", "quota_used_pct")


class AlertEngine:
    def __init__(
        self,
        js: JetStreamContext,
        kv: KeyValue,
        config: Config,
        series: Series,
        *,
        reporter: TelemetryReporter | None = None,
        admission: Admission | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self._js, self._config, self._series = js, config, series
        self._subjects = Subjects.of(config)
        self.store = AlertStore(js, kv, self._subjects)
        self._reporter, self._admission = reporter, admission
        self.notifier = notifier or Notifier(config.alerts)
        self._lease = KVLease(kv, EVALUATOR_KEY, new_owner(), LEASE_TTL_S)
        self._budgets: list[tuple[str, dict[str, str], float]] = []
        self._budgets_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._exported: set[tuple[str, str, str]] = set()

    def start(self) -> None:
        self.notifier.start()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self.notifier.stop()
        if self._lease.held:
            await self._lease.release()

    async def _loop(self) -> None:
        while True:
            try:
                await self.evaluate()
            except Exception as exc:  # NATS away: evaluate at the next round
                log.warning("alert evaluator: %s", exc)
            await asyncio.sleep(self._config.alerts.evaluate_every_s)

    async def evaluate(self) -> bool:
        """One round, if this process holds (or takes) the evaluator lease."""
        if not await self._lease.acquire():  # taken, or renewed: ours for a TTL more
            return False
        await self.round()
        return True

    async def round(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if self._reporter is not None:
            try:
                rows = await gauges.sample(self._js, self._config, self._subjects)
            except Exception as exc:  # no worker ever started (no buckets yet): rules still run
                log.debug("alert evaluator: no gauges this round: %s", exc)
                rows = []
            if rows:
                self._series.add(TelemetryReport(process="gauges", at=now, rows=rows))
                await self._reporter.report(rows, at=now)
        rules = in_force(self._config.alerts, await self.store.rules())
        active = await self.store.active()
        measured: set[str] = set()
        for rule, labels, value in await self._measured(rules, now):
            ident = alert_id(rule.name, labels)
            measured.add(ident)
            held = value is not None and holds(value, rule.op, rule.threshold)
            await self._step(rule, ident, labels, value, held, active.get(ident), now)
        by_name = {rule.name: rule for rule in rules}
        for ident, (alert, revision) in active.items():
            if ident not in measured:  # no data any more, or its rule is gone
                gone = by_name.get(alert.rule)
                if gone is not None:
                    await self._step(gone, ident, alert.labels, None, False, (alert, revision), now)
                else:
                    await self._resolve(alert, revision, now)
        self._export(await self.store.active())

    def _export(self, active: dict[str, tuple[Alert, int]]) -> None:
        """The ``promptbus_alerts`` gauge: what is pending or firing, per rule."""
        counts: dict[tuple[str, str, str], int] = {}
        for alert, _ in active.values():
            key: tuple[str, str, str] = (alert.rule, alert.severity, alert.status)
            counts[key] = counts.get(key, 0) + 1
        for key in self._exported - counts.keys():
            metrics.ALERTS_ACTIVE.labels(*key).set(0)
        for key, count in counts.items():
            metrics.ALERTS_ACTIVE.labels(*key).set(count)
        self._exported = set(counts)

    async def _measured(
        self, rules: list[AlertRule], now: float
    ) -> list[tuple[AlertRule, dict[str, str], float | None]]:
        out: list[tuple[AlertRule, dict[str, str], float | None]] = []
        watched = [r for r in rules if r.metric in _BUDGET_METRICS]
        if (
            watched
            and self._admission is not None
            and now - self._budgets_at >= self._config.alerts.budget_every_s
        ):
            self._budgets, self._budgets_at = await budgets.used(self._admission, now), now
        for rule in rules:
            if rule.metric in _BUDGET_METRICS:
                out.extend(
                    (rule, labels, pct)
                    for metric, labels, pct in self._budgets
                    if metric == rule.metric
                    and all(labels.get(k) == v for k, v in rule.labels.items())
                )
                continue
            for group, value in measure(rule, self._series, now).items():
                out.append((rule, rule.filters | dict(group), value))
        return out

    async def _step(
        self,
        rule: AlertRule,
        ident: str,
        labels: dict[str, str],
        value: float | None,
        held: bool,
        current: tuple[Alert, int] | None,
        now: float,
    ) -> None:
        try:
            if current is None:
                if held:
                    await self._open(rule, ident, labels, value, now)
                return
            alert, revision = current
            if not held:
                if alert.status == "firing":
                    await self._resolve(alert, revision, now)
                else:  # pending that did not last: gone without a word
                    await self.store.drop(ident, revision)
                return
            alert.value = value
            kind: AlertEventKind | None = None
            if alert.status == "pending" and now - alert.started_at >= rule.for_s:
                alert.status, alert.fired_at, kind = "firing", now, "firing"
            elif (
                alert.status == "firing"
                and alert.acked_at is None
                and now - (alert.notified_at or alert.fired_at or now)
                >= self._config.alerts.repeat_s
            ):
                kind = "firing"  # reminded: nobody acknowledged it
            if kind is not None:
                alert.notified_at = now
            await self.store.put(alert, revision)
            if kind is not None:
                await self._announce(kind, alert, now)
        except KeyWrongLastSequenceError:
            return  # changed meanwhile (acknowledged): measured again next round

    async def _open(
        self, rule: AlertRule, ident: str, labels: dict[str, str], value: float | None, now: float
    ) -> None:
        alert = Alert(
            id=ident,
            rule=rule.name,
            metric=rule.metric,
            op=rule.op,
            threshold=rule.threshold,
            severity=rule.severity,
            labels=labels,
            status="pending",
            value=value,
            started_at=now,
            description=rule.description,
        )
        if rule.for_s <= 0:
            alert.status, alert.fired_at, alert.notified_at = "firing", now, now
        await self.store.put(alert, None)
        await self.store.event("pending", alert, now)
        if alert.status == "firing":
            await self._announce("firing", alert, now)

    async def _resolve(self, alert: Alert, revision: int, now: float) -> None:
        alert.status, alert.resolved_at = "resolved", now
        await self.store.drop(alert.id, revision)
        await self._announce("resolved", alert, now)

    async def _announce(self, kind: AlertEventKind, alert: Alert, now: float) -> None:
        await self.store.event(kind, alert, now)
        self.notifier.notify(AlertEvent(at=now, kind=kind, alert=alert))
        level = logging.WARNING if kind == "firing" else logging.INFO
        log.log(level, "alert %s: %s", kind, alert.summary)
