"""Where alerts live in NATS: the alerts bucket holds each alert while it is pending or
firing (``active.<id>``) and the rules added at run time (``rule.<name>``); the alerts
stream keeps every alert's events. Read and written by the evaluator, the admin API and
the CLI alike."""

from __future__ import annotations

import datetime
import hashlib
import re
import time

import msgspec
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from broker.nats.subjects import Subjects
from schemas.alerts import (
    RULE_NAME,
    Alert,
    AlertEvent,
    AlertEventKind,
    AlertRule,
    alert_decoder,
    alert_encoder,
    event_decoder,
    rule_decoder,
)
from schemas.errors import NotFound

ACTIVE, RULE = "active.", "rule."
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\.[a-z0-9]{1,16}$")  # what alert_id makes


def alert_id(rule: str, labels: dict[str, str]) -> str:
    """A KV-safe id, the same for the same rule and label values on every process."""
    if not labels:
        return f"{rule}.all"
    text = "\x00".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return f"{rule}.{hashlib.sha256(text.encode()).hexdigest()[:12]}"


class AlertStore:
    def __init__(self, js: JetStreamContext, kv: KeyValue, subjects: Subjects) -> None:
        self._js, self._kv, self._subjects = js, kv, subjects

    async def _keys(self, prefix: str) -> list[str]:
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return []
        return [k for k in keys if k.startswith(prefix)]

    async def _entries(self, prefix: str) -> list[tuple[bytes, int]]:
        """(value, revision) of every entry under ``prefix`` that has a value."""
        out = []
        for key in await self._keys(prefix):
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:
                continue  # deleted meanwhile
            if entry.value:
                out.append((entry.value, entry.revision or 0))
        return out

    async def active(self) -> dict[str, tuple[Alert, int]]:
        """Every pending or firing alert and its revision, by id."""
        out: dict[str, tuple[Alert, int]] = {}
        for value, revision in await self._entries(ACTIVE):
            try:
                alert = alert_decoder.decode(value)
            except msgspec.DecodeError:
                continue
            out[alert.id] = (alert, revision)
        return out

    async def put(self, alert: Alert, revision: int | None) -> int:
        """Compare-and-set (None: create); KeyWrongLastSequenceError when it changed."""
        value = alert_encoder.encode(alert)
        if revision is None:
            return await self._kv.create(ACTIVE + alert.id, value)
        return await self._kv.update(ACTIVE + alert.id, value, last=revision)

    async def drop(self, alert_id: str, revision: int) -> None:
        """Compare-and-delete: KeyWrongLastSequenceError when it changed meanwhile."""
        await self._kv.delete(ACTIVE + alert_id, last=revision)

    async def event(self, kind: AlertEventKind, alert: Alert, at: float | None = None) -> None:
        event = AlertEvent(at=time.time() if at is None else at, kind=kind, alert=alert)
        await self._js.publish(self._subjects.alert_event(alert.rule), alert_encoder.encode(event))

    async def ack(self, alert_id: str, by: str) -> Alert:
        """An operator acknowledges a firing (or pending) alert: no more notifications of
        it until it resolves. NotFound when no such alert is active."""
        if not _ID.match(alert_id):  # nor a KV key to look up
            raise NotFound(404, f"No active alert `{alert_id[:100]}`.", code="alert_not_found")
        for _ in range(16):
            try:
                entry = await self._kv.get(ACTIVE + alert_id)
            except KeyNotFoundError:
                entry = None
            if entry is None or not entry.value:
                raise NotFound(404, f"No active alert `{alert_id}`.", code="alert_not_found")
            alert = alert_decoder.decode(entry.value)
            if alert.acked_at is not None:
                return alert
            alert.acked_by, alert.acked_at = by, time.time()
            try:
                await self.put(alert, entry.revision)
            except KeyWrongLastSequenceError:
                continue
            await self.event("acknowledged", alert, alert.acked_at)
            return alert
        raise RuntimeError(f"alert {alert_id}: acknowledgement kept conflicting")

    async def history(self, since: float | None = None, limit: int = 200) -> list[AlertEvent]:
        """The latest events (oldest first), at most ``limit``, from ``since`` on."""
        stream = self._subjects.alerts_stream
        try:
            info = await self._js.stream_info(stream)
        except NotFoundError:
            return []
        state = info.state
        if not state or not state.messages:
            return []
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE, inactive_threshold=10.0, mem_storage=True
        )
        if since is not None:
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = datetime.datetime.fromtimestamp(since, datetime.UTC)
        else:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(state.first_seq, state.last_seq - limit + 1)
        sub = await self._js.pull_subscribe(
            self._subjects.alerts_wildcard, stream=stream, config=config
        )
        events: list[AlertEvent] = []
        try:
            while True:
                try:
                    msgs = await sub.fetch(256, timeout=0.5)
                except TimeoutError:
                    break
                for msg in msgs:
                    try:
                        events.append(event_decoder.decode(msg.data))
                    except msgspec.DecodeError:
                        continue
                if msgs[-1].metadata.sequence.stream >= state.last_seq:
                    break
        finally:
            await sub.unsubscribe()
        return events[-limit:]

    async def rules(self) -> list[AlertRule]:
        """The rules added through the admin API or CLI."""
        out = []
        for value, _ in await self._entries(RULE):
            try:
                out.append(rule_decoder.decode(value))
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # another version's rule
        return sorted(out, key=lambda r: r.name)

    async def set_rule(self, rule: AlertRule) -> None:
        await self._kv.put(RULE + rule.name, msgspec.json.encode(rule))

    async def delete_rule(self, name: str) -> None:
        if not re.match(RULE_NAME, name):
            raise NotFound(404, f"No alert rule `{name[:100]}`.", code="rule_not_found")
        try:
            await self._kv.get(RULE + name)
        except KeyNotFoundError:
            raise NotFound(
                404, f"No alert rule `{name}` was added at run time.", code="rule_not_found"
            ) from None
        await self._kv.delete(RULE + name)
