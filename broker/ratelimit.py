"""Token buckets shared by every process, in the ``<prefix>_ratelimits`` KV bucket.

Each bucket is GCRA (the generic cell rate algorithm, as in redis-cell): its whole state
is one number, the *theoretical arrival time* ``tat``. A bucket of ``limit`` units per
minute refills one unit every ``T = 60 / limit`` seconds and holds ``burst`` units, i.e.
``tau = burst * T`` seconds of credit. Taking ``cost`` units at ``now`` moves ``tat`` to
``max(tat, now) + cost * T``, allowed while that stays within ``now + tau``.

Updates are compare-and-set on the entry's revision, so any number of ingress and worker
processes admit exactly what the limit allows. Each process remembers the last revision
it saw: with one writer a check is one round trip; a conflict costs a re-read and a retry.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

_MAX_TRIES = 16


@dataclass(frozen=True, slots=True)
class Bucket:
    """One limit: ``key`` names its KV entry, ``kind`` is "requests" or "tokens"."""

    key: str
    kind: str
    limit: int  # per minute
    burst: int

    @property
    def interval(self) -> float:
        return 60.0 / self.limit

    @property
    def tau(self) -> float:
        return self.burst * self.interval


@dataclass(frozen=True, slots=True)
class Decision:
    bucket: Bucket
    allowed: bool
    remaining: int  # units left after this request
    reset_s: float  # seconds until the bucket is full again
    retry_after_s: float  # when refused: seconds until the request would fit


def _pack(tat: float) -> bytes:
    return struct.pack(">d", tat)


def _unpack(value: bytes | None) -> float:
    return struct.unpack(">d", value)[0] if value and len(value) == 8 else 0.0


class RateLimiter:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._seen: dict[str, tuple[float, int | None]] = {}  # key -> (tat, revision)

    async def _read(self, key: str) -> tuple[float, int | None]:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            state: tuple[float, int | None] = (0.0, None)
        else:
            state = (_unpack(entry.value), entry.revision)
        self._seen[key] = state
        return state

    async def _write(self, key: str, tat: float, revision: int | None) -> bool:
        try:
            if revision is None:
                new = await self._kv.create(key, _pack(tat))
            else:
                new = await self._kv.update(key, _pack(tat), last=revision)
        except KeyWrongLastSequenceError:
            return False
        self._seen[key] = (tat, new)
        return True

    async def take(self, bucket: Bucket, cost: int) -> Decision:
        """Take ``cost`` units if the bucket has them (a cost above the burst is let
        through only when the bucket is full, so a large request is never refused forever)."""
        state = self._seen.get(bucket.key)
        fresh = state is None
        if state is None:
            state = await self._read(bucket.key)
        for _ in range(_MAX_TRIES):
            tat, revision = state
            now = time.time()
            start = max(tat, now)
            new_tat = start + cost * bucket.interval
            over = new_tat - now - bucket.tau
            if over > 1e-9 and not (start == now and cost > bucket.burst):
                if not fresh:  # refuse on the latest state only, never on a stale one
                    state, fresh = await self._read(bucket.key), True
                    continue
                remaining = max(0, math.floor((bucket.tau - (start - now)) / bucket.interval))
                return Decision(bucket, False, remaining, start - now, over)
            if await self._write(bucket.key, new_tat, revision):
                remaining = max(0, math.floor((bucket.tau - (new_tat - now)) / bucket.interval))
                return Decision(bucket, True, remaining, new_tat - now, 0.0)
            state, fresh = await self._read(bucket.key), True
        raise RuntimeError(f"rate limit {bucket.key}: too much contention")

    async def adjust(self, bucket: Bucket, delta: int) -> None:
        """Give back (negative) or charge (positive) units after the fact: the request
        was admitted with an estimate and its real usage is now known."""
        if delta == 0:
            return
        state = self._seen.get(bucket.key) or await self._read(bucket.key)
        for _ in range(_MAX_TRIES):
            tat, revision = state
            if revision is None:
                return  # nothing recorded (expired): nothing to correct
            now = time.time()
            new_tat = (
                max(now, tat) + delta * bucket.interval
                if delta > 0
                else tat + delta * bucket.interval
            )
            if await self._write(bucket.key, new_tat, revision):
                return
            state = await self._read(bucket.key)

    async def take_all(self, wanted: list[tuple[Bucket, int]]) -> list[Decision]:
        """Take from every bucket or from none: on a refusal the others are refunded."""
        decisions = list(await asyncio.gather(*(self.take(b, c) for b, c in wanted)))
        if not all(d.allowed for d in decisions):
            await asyncio.gather(
                *(
                    self.adjust(d.bucket, -c)
                    for d, (_, c) in zip(decisions, wanted, strict=True)
                    if d.allowed
                )
            )
        return decisions
