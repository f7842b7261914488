"""The usage ledger: tokens and costs per key, tenant, model and deployment, in NATS.

JetStream counters (a stream with ``allow_msg_counter``): a publish with a ``Nats-Incr``
header adds to the subject's total atomically on the server, so any number of workers
record without coordination, and the total is the subject's last message. Two families:

    <prefix>.usage.a.<scope>.<id>.<period>.<metric>    aggregates read at admission
    <prefix>.usage.d.<YYYYMMDD>.<tenant>.<key>.<model>.<deployment>.<metric>   reports

scope is ``key`` or ``tenant``; period is ``h2026112503``, ``d20261125``, ``w2026-48``,
``m202611`` or ``all``; metrics are ``tokens`` and ``cost`` (nano-USD, integers).
Admission reads aggregates from a live local copy (an ordered consumer delivering the
last value of each subject, then every change), so a budget check is a dict lookup.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import functools
import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from broker.nats.subjects import Subjects, decode_token, parse_usage_detail
from broker.nats.tasks import cancel_and_wait
from schemas.config import Config
from schemas.tenancy import Period, TeamUsageRow, UsageRow, UserUsageRow

log = logging.getLogger(__name__)

ANONYMOUS = "-"  # the key id of requests without a key (auth.required off)
NANO = 1_000_000_000  # cost counters count nano-dollars
FLUSH_S = 0.2  # unmetered usage is recorded in batches this often


class _Counter(msgspec.Struct):
    val: str = "0"


_counter = msgspec.json.Decoder(_Counter)


def counter_value(data: bytes | None) -> int:
    """A counter's total: from its last message, or from the ack of a ``Nats-Incr``
    publish (both carry it as ``{"val": "..."}``)."""
    return int(_counter.decode(data or b"{}").val)


async def read_counter(js: JetStreamContext, stream: str, subject: str) -> int:
    """A counter's total read from the server now (one direct get; 0 if never added to)."""
    try:
        msg = await js.get_last_msg(stream, subject, direct=True)
    except NotFoundError:
        return 0
    return counter_value(msg.data)


# ---------------------------------------------------------------- periods


def period_key(period: Period, at: float) -> str:
    t = datetime.fromtimestamp(at, UTC)
    if period == "hourly":
        return t.strftime("h%Y%m%d%H")
    if period == "daily":
        return t.strftime("d%Y%m%d")
    if period == "weekly":
        year, week, _ = t.isocalendar()
        return f"w{year}-{week:02d}"
    if period == "monthly":
        return t.strftime("m%Y%m")
    return "all"


def period_end(period: Period, at: float) -> float | None:
    """When the period containing ``at`` ends (UTC); None for ``never``."""
    t = datetime.fromtimestamp(at, UTC)
    if period == "hourly":
        start = t.replace(minute=0, second=0, microsecond=0)
        return (start + timedelta(hours=1)).timestamp()
    if period == "daily":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return (start + timedelta(days=1)).timestamp()
    if period == "weekly":
        start = (t - timedelta(days=t.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        return (start + timedelta(days=7)).timestamp()
    if period == "monthly":
        days = calendar.monthrange(t.year, t.month)[1]
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return (start + timedelta(days=days)).timestamp()
    return None


QUOTA_PERIODS: tuple[Period, ...] = ("hourly", "daily", "weekly", "monthly", "never")
BUDGET_PERIODS: tuple[Period, ...] = ("daily", "monthly")


def aggregate(s: Subjects, scope: str, ident: str, period: Period, at: float, metric: str) -> str:
    """The aggregate counter of ``scope`` (key or tenant) ``ident`` in the period at ``at``."""
    return s.usage_aggregate(scope, ident, period_key(period, at), metric)


def day_of(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y%m%d")


RECORDS_MAX_BYTES = 256 * 1024  # a spend-log message, well under NATS's max_payload


class UsageRecorder:
    """Adds a request's usage to the counters; batched unless the caller waits for it."""

    def __init__(self, nc: NATS, prefix: str) -> None:
        self._nc = nc
        self._subjects = Subjects(prefix)
        self._pending: dict[str, int] = defaultdict(int)
        self._task: asyncio.Task[None] | None = None
        self._urgent: dict[str, int] = defaultdict(int)  # record_now's, not yet published
        self._urgent_done: asyncio.Future[None] | None = None  # when they will be
        self._urgent_flusher: asyncio.Task[None] | None = None
        self._records: dict[str, list[bytes]] = defaultdict(list)  # spend log, by subject

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self.flush()

    def _increments(
        self,
        *,
        tenant: str,
        key_id: str,
        model: str,
        deployment: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        at: float,
        team: str = "",
        user: str = "",
    ) -> tuple[dict[str, int], dict[str, int]]:
        """A request's counter increments: those budgets and quotas read (cost and tokens
        per period), and the per-day detail behind the usage reports."""
        costs, tokens, details = self._names(tenant, key_id, team, user, model, deployment, int(at))
        cost = round(cost_usd * NANO)
        checked = dict.fromkeys(costs, cost)
        checked.update(dict.fromkeys(tokens, prompt_tokens + completion_tokens))
        values = (1, prompt_tokens, completion_tokens, cost)
        return checked, dict(zip(details, values * (len(details) // 4), strict=True))

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (one recorder per process)
    def _names(
        self,
        tenant: str,
        key_id: str,
        team: str,
        user: str,
        model: str,
        deployment: str,
        second: int,
    ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """The counters one request adds to, built once per second (the hot path pays
        dict updates, not string formatting). Team and end-user counters only for
        requests that have them."""
        s, at = self._subjects, float(second)
        costs: list[str] = []
        tokens: list[str] = []
        if key_id != ANONYMOUS:  # budgets and quotas exist only for keys
            scopes = [("key", key_id, False), ("tenant", tenant, True)]
            if team:
                scopes.append(("team", f"{tenant}/{team}", True))
            if user:
                scopes.append(("user", f"{tenant}/{user}", True))
            for scope, ident, has_quota in scopes:
                costs += (aggregate(s, scope, ident, p, at, "cost") for p in BUDGET_PERIODS)
                if has_quota:
                    tokens += (aggregate(s, scope, ident, p, at, "tokens") for p in QUOTA_PERIODS)
        metrics = ("requests", "prompt", "completion", "cost")
        day = day_of(at)
        details = [s.usage_detail(day, tenant, key_id, model, deployment, m) for m in metrics]
        if user:
            details += (s.usage_user_detail(day, tenant, user, m) for m in metrics)
        return tuple(costs), tuple(tokens), tuple(details)

    async def record_now(self, released: dict[str, int] | None = None, **usage: Any) -> None:
        """Publish before returning: a budget or quota's next admission must see it,
        and the request's holds released (``released``, broker/tenancy/holds.py).
        Only the counters admission reads wait (9 of 13); the per-day detail goes with
        the next batch. Concurrent callers share the publishes (group commit): what
        arrives while one group is being published goes out, summed per counter, in the
        next, and each caller returns once its own group is stored."""
        checked, details = self._increments(**usage)
        pending, urgent = self._pending, self._urgent
        for subject, value in details.items():
            pending[subject] += value
        for subject, value in checked.items():
            urgent[subject] += value
        for subject, value in (released or {}).items():
            urgent[subject] += value
        if self._urgent_done is None:
            self._urgent_done = asyncio.get_running_loop().create_future()
        done = self._urgent_done
        if self._urgent_flusher is None:
            self._urgent_flusher = asyncio.create_task(self._flush_urgent())
        await asyncio.shield(done)

    async def _flush_urgent(self) -> None:
        try:
            while self._urgent:
                group, self._urgent = self._urgent, defaultdict(int)
                done, self._urgent_done = self._urgent_done, None
                try:
                    await self._publish(group)
                finally:
                    if done is not None and not done.done():
                        done.set_result(None)
        finally:
            self._urgent_flusher = None

    def release(self, released: dict[str, int]) -> None:
        """Release holds of a request that used nothing, with the next batch."""
        for subject, value in released.items():
            self._pending[subject] += value

    def add(self, **usage: Any) -> None:
        """Recorded with the next batch, within ``FLUSH_S`` (no I/O on the request path)."""
        pending = self._pending
        for increments in self._increments(**usage):
            for subject, value in increments.items():
                pending[subject] += value

    def add_counts(self, increments: dict[str, int]) -> None:
        """Add to any counters of the usage stream with the next batch (experiments'
        per-variant counts, broker/experiments/stats.py)."""
        pending = self._pending
        for subject, value in increments.items():
            pending[subject] += value

    def add_record(self, subject: str, data: bytes) -> None:
        """A spend-log record, published with the next batch of counters: the records of
        one subject (tenant and key) in a batch travel as one message, a line each."""
        self._records[subject].append(data)

    async def flush(self) -> None:
        pending, self._pending = self._pending, defaultdict(int)
        if pending:
            await self._publish(pending)
        records, self._records = self._records, defaultdict(list)
        if records:
            await self._publish_records(records)

    async def _publish_records(self, records: dict[str, list[bytes]]) -> None:
        """One message of lines per subject (split at ``RECORDS_MAX_BYTES``), the last
        one acknowledged (stored in order, like the counters)."""
        chunks: list[tuple[str, bytes]] = []
        for subject, lines in records.items():
            chunk: list[bytes] = []
            size = 0
            for line in lines:
                if chunk and size + len(line) > RECORDS_MAX_BYTES:
                    chunks.append((subject, b"\n".join(chunk)))
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line) + 1
            chunks.append((subject, b"\n".join(chunk)))
        try:
            for subject, data in chunks[:-1]:
                await self._nc.publish(subject, data)
            subject, data = chunks[-1]
            await self._nc.request(subject, data, timeout=5)
        except Exception as exc:
            count = sum(len(lines) for lines in records.values())
            log.warning("spend log: %d records not stored: %s", count, exc)

    async def _publish(self, increments: dict[str, int]) -> None:
        """Every increment, then one acknowledged: the usage stream stores what one
        connection sends in order, so the last ack says all of them are stored (one
        request-reply per group instead of one per counter: each costs an inbox token,
        a reply and a wake-up)."""
        items = [(s, v) for s, v in increments.items() if v]
        if not items:
            return
        try:
            for subject, value in items[:-1]:
                await self._nc.publish(subject, b"", headers={"Nats-Incr": str(value)})
            subject, value = items[-1]
            await self._nc.request(subject, b"", timeout=5, headers={"Nats-Incr": str(value)})
        except Exception as exc:
            log.warning("usage not recorded (%d counters): %s", len(items), exc)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except Exception:
                log.exception("usage flush failed")


class UsageView:
    """A live local copy of the aggregate counters, for admission checks."""

    def __init__(self, js: JetStreamContext, config: Config) -> None:
        self._js = js
        self._config = config
        self._subjects = Subjects.of(config)
        self._values: dict[str, int] = {}
        self._reading: dict[str, asyncio.Future[int]] = {}  # subject -> its read in flight
        self._sub: object | None = None

    async def start(self) -> None:
        self._sub = await self._js.subscribe(
            self._subjects.usage_aggregates,
            stream=self._subjects.usage_stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            cb=self._on_msg,
        )

    async def _on_msg(self, msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError, ValueError):
            self._values[msg.subject] = int(_counter.decode(msg.data).val)

    async def stop(self) -> None:
        sub = self._sub
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()  # type: ignore[attr-defined]

    def value(self, scope: str, ident: str, period: Period, metric: str, at: float) -> int:
        return self._values.get(aggregate(self._subjects, scope, ident, period, at, metric), 0)

    def spent_usd(self, scope: str, ident: str, period: Period, at: float) -> float:
        return self.value(scope, ident, period, "cost", at) / NANO

    async def current(self, scope: str, ident: str, period: Period, metric: str, at: float) -> int:
        """The counter's value read from the server now (one direct get), for checks that
        must not trail the ledger: budgets and quotas. Concurrent checks of one counter
        share the read in flight (it started at most a round trip before)."""
        subject = aggregate(self._subjects, scope, ident, period, at, metric)
        reading = self._reading.get(subject)
        if reading is None:
            reading = asyncio.ensure_future(self._read(subject))
            self._reading[subject] = reading
            reading.add_done_callback(lambda _: self._reading.pop(subject, None))
        return await asyncio.shield(reading)

    async def _read(self, subject: str) -> int:
        value = await read_counter(self._js, self._subjects.usage_stream, subject)
        self._values[subject] = value
        return value


async def report(
    js: JetStreamContext, config: Config, days: list[str], tenant: str | None = None
) -> list[UsageRow]:
    """Usage rows for the given days (YYYYMMDD), optionally one tenant's."""
    rows: dict[tuple[str, ...], UsageRow] = {}
    subjects_of = Subjects.of(config)
    stream = subjects_of.usage_stream
    for day in days:
        scope = subjects_of.usage_details(day, tenant)
        info = await js.stream_info(stream, subjects_filter=scope)
        subjects = sorted((info.state.subjects or {}) if info.state else {})
        for subject in subjects:
            msg = await js.get_last_msg(stream, subject, direct=True)
            _add(rows, subject, counter_value(msg.data), day)
    return sorted(rows.values(), key=lambda r: (r.day, r.tenant, r.key_id, r.model, r.deployment))


async def user_report(
    js: JetStreamContext, config: Config, days: list[str], tenant: str | None = None
) -> list[UserUsageRow]:
    """End users' rows for the given days (YYYYMMDD), optionally one tenant's."""
    rows: dict[tuple[str, str, str], UserUsageRow] = {}
    subjects_of = Subjects.of(config)
    stream = subjects_of.usage_stream
    for day in days:
        scope = subjects_of.usage_user_details(day, tenant)
        info = await js.stream_info(stream, subjects_filter=scope)
        for subject in sorted((info.state.subjects or {}) if info.state else {}):
            msg = await js.get_last_msg(stream, subject, direct=True)
            who, user, metric = (decode_token(p) for p in subject.split(".")[-3:])
            row = rows.get((day, who, user))
            if row is None:
                iso = f"{day[:4]}-{day[4:6]}-{day[6:]}"
                row = rows[(day, who, user)] = UserUsageRow(day=iso, tenant=who, user=user)
            _count(row, metric, counter_value(msg.data))
    return sorted(rows.values(), key=lambda r: (r.day, r.tenant, r.user))


def _count(row: UsageRow | UserUsageRow | TeamUsageRow, metric: str, value: int) -> None:
    if metric == "requests":
        row.requests += value
    elif metric == "prompt":
        row.prompt_tokens += value
    elif metric == "completion":
        row.completion_tokens += value
    elif metric == "cost":
        row.cost_usd += value / NANO


def team_rows(rows: list[UsageRow], team_of: dict[str, str | None]) -> list[TeamUsageRow]:
    """The key rows summed per team (``team_of``: key id -> its team; "-": none)."""
    teams: dict[tuple[str, str, str], TeamUsageRow] = {}
    for row in rows:
        team = team_of.get(row.key_id) or "-"
        found = teams.get((row.day, row.tenant, team))
        if found is None:
            found = teams[(row.day, row.tenant, team)] = TeamUsageRow(
                day=row.day, tenant=row.tenant, team=team
            )
        found.requests += row.requests
        found.prompt_tokens += row.prompt_tokens
        found.completion_tokens += row.completion_tokens
        found.cost_usd += row.cost_usd
    return sorted(teams.values(), key=lambda r: (r.day, r.tenant, r.team))


def _add(rows: dict[tuple[str, ...], UsageRow], subject: str, value: int, day: str) -> None:
    tenant, key_id, model, deployment, metric = parse_usage_detail(subject)
    ident = (day, tenant, key_id, model, deployment)
    row = rows.get(ident)
    if row is None:
        iso = f"{day[:4]}-{day[4:6]}-{day[6:]}"
        row = rows[ident] = UsageRow(
            day=iso, tenant=tenant, key_id=key_id, model=model, deployment=deployment
        )
    _count(row, metric, value)
