"""An hour of telemetry in memory, followed from the telemetry stream: every process
that reads it (each ingress, the alert evaluator) sees what every process reported.

Reports are added up in ``SLOT_S`` slots. Gauge rows (queue depth, breakers, workers)
are levels: a slot keeps the last value of each. ``window`` sums what a rule or chart
point looks at, grouped by the labels asked for.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from broker.nats.subjects import Subjects
from broker.telemetry.counts import GAUGE, RowKey
from schemas.telemetry import TelemetryReport, report_decoder

log = logging.getLogger(__name__)

SLOT_S = 10
LABELS = ("model", "deployment", "tenant")  # a row key's places 1..3
Group = tuple[tuple[str, str], ...]  # (label, value) pairs, sorted by label


@dataclass(slots=True)
class Window:
    """What one group of rows counted over a span: counters summed per source, and the
    latest gauge levels (one per row)."""

    counts: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    gauges: dict[RowKey, dict[str, int]] = field(default_factory=dict)

    def add(self, source: str, counts: Mapping[str, int]) -> None:
        into = self.counts[source]
        for name, value in counts.items():
            into[name] = into.get(name, 0) + value


def matches(key: RowKey, labels: Mapping[str, str]) -> bool:
    return all(key[LABELS.index(k) + 1] == v for k, v in labels.items())


def group_of(key: RowKey, by: Iterable[str]) -> Group:
    return tuple(sorted((label, key[LABELS.index(label) + 1]) for label in by))


class Series:
    """Telemetry slots of the last ``retention_s``, kept up to date from NATS."""

    def __init__(self, retention_s: float = 3600.0) -> None:
        self.retention_s = retention_s
        self._counts: dict[int, dict[RowKey, dict[str, int]]] = {}
        self._gauges: dict[int, dict[RowKey, dict[str, int]]] = {}
        self._sub: Subscription | None = None

    async def follow(self, js: JetStreamContext, subjects: Subjects) -> None:
        """Replay the kept reports and follow new ones (an ordered consumer: no acks,
        re-created by nats-py when it falls behind or the server restarts)."""
        since = datetime.datetime.fromtimestamp(time.time() - self.retention_s, datetime.UTC)
        self._sub = await js.subscribe(
            subjects.telemetry_wildcard,
            stream=subjects.telemetry_stream,
            cb=self._on_report,
            ordered_consumer=True,
            idle_heartbeat=5.0,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=since,
                ack_policy=AckPolicy.NONE,
            ),
        )

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection is closing anyway
                log.debug("telemetry follower: %s", exc)

    async def _on_report(self, msg: Msg) -> None:
        try:
            report = report_decoder.decode(msg.data)
        except Exception:
            return  # not ours to crash on: another version's report
        self.add(report)

    def add(self, report: TelemetryReport) -> None:
        slot = int(report.at // SLOT_S)
        counts = self._counts.setdefault(slot, {})
        for row in report.rows:
            key = (row.source, row.model, row.deployment, row.tenant)
            if row.source == GAUGE:
                self._gauges.setdefault(slot, {})[key] = row.counts
                continue
            into = counts.get(key)
            if into is None:
                counts[key] = dict(row.counts)
            else:
                for name, value in row.counts.items():
                    into[name] = into.get(name, 0) + value
        self._prune(report.at)

    def _prune(self, now: float) -> None:
        oldest = int((now - self.retention_s) // SLOT_S)
        for slots in (self._counts, self._gauges):
            for slot in [s for s in slots if s < oldest]:
                del slots[slot]

    def window(
        self,
        since: float,
        until: float,
        labels: Mapping[str, str] | None = None,
        by: Iterable[str] = (),
    ) -> dict[Group, Window]:
        """The rows of the slots in [since, until), matching ``labels``, per group of
        ``by``; gauges from the latest slot of the span that has any."""
        labels, by = labels or {}, tuple(by)
        first, last = int(since // SLOT_S), int((until - 1e-6) // SLOT_S)
        out: dict[Group, Window] = defaultdict(Window)
        for slot in range(first, last + 1):
            for key, counts in self._counts.get(slot, {}).items():
                if matches(key, labels):
                    out[group_of(key, by)].add(key[0], counts)
        for slot in range(last, first - 1, -1):
            gauges = self._gauges.get(slot)
            if gauges:
                for key, levels in gauges.items():
                    if matches(key, labels):
                        out[group_of(key, by)].gauges[key] = levels
                break
        return dict(out)

    def label_values(self, label: str, since: float) -> list[str]:
        """Every value ``label`` had in the rows since ``since`` (for chart pickers)."""
        place = LABELS.index(label) + 1
        first = int(since // SLOT_S)
        seen: set[str] = set()
        for slots in (self._counts, self._gauges):
            for slot, rows in slots.items():
                if slot >= first:
                    seen.update(key[place] for key in rows)
        return sorted(v for v in seen if v and v != "*")
