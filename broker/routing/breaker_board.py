"""A read-only, live view of every deployment's circuit breaker (``pb_breakers``).

Clients use it to route around open deployments; workers build their own breakers on it.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from nats.js.kv import KeyValue

from broker.nats.kvwatch import KVFollower
from broker.nats.subjects import breaker_key
from schemas.state import BreakerRecord, BreakerState, record_decoder

# Called with (key, record or None when removed, revision).
OnRecord = Callable[[str, BreakerRecord | None, int | None], None]


class BreakerRecords:
    def __init__(self, kv: KeyValue) -> None:
        self.records: dict[str, BreakerRecord] = {}
        self._listeners: list[OnRecord] = []
        self._follower = KVFollower(kv, self._apply)

    def listen(self, listener: OnRecord) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    def _apply(self, key: str, value: bytes | None, revision: int | None) -> None:
        record: BreakerRecord | None = None
        if value is not None:
            try:
                record = record_decoder.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return
        if record is None:
            self.records.pop(key, None)
        else:
            self.records[key] = record
        for listener in self._listeners:
            listener(key, record, revision)

    def state(self, deployment: str) -> BreakerState:
        record = self.records.get(breaker_key(deployment))
        return BreakerState.CLOSED if record is None else record.state
