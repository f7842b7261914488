"""Token buckets shared by every process, in the ``<prefix>_ratelimits`` KV bucket.

Each bucket is GCRA (the generic cell rate algorithm, as in redis-cell): its whole state
is one number, the *theoretical arrival time* ``tat``. A bucket of ``limit`` units per
minute refills one unit every ``T = 60 / limit`` seconds and holds ``burst`` units, i.e.
``tau = burst * T`` seconds of credit. Taking ``cost`` units at ``now`` moves ``tat`` to
``max(tat, now) + cost * T``, allowed while that stays within ``now + tau``.

Updates are compare-and-set on the entry's revision, so any number of ingress and worker
processes admit exactly what the limit allows. Each process remembers the last revision
it saw: with one writer a check is one round trip; a conflict costs a re-read and a retry.
Within a process the takes of one bucket run one after another: concurrent requests of
one hot key would otherwise all write against the same revision, all but one conflict,
and at a few hundred requests a second they ran out of retries (a 500 before this).
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from schemas.errors import BrokerError, Unavailable

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
        self._locks: dict[str, asyncio.Lock] = {}  # key -> one write in flight at a time
        self._waiting: dict[str, list[tuple[int, asyncio.Future[Decision]]]] = {}
        self._deltas: dict[str, int] = {}  # key -> adjustments not yet written

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

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
        through only when the bucket is full, so a large request is never refused forever).

        Takes of one bucket in this process are decided together: the first caller to
        get the bucket's lock decides for everyone waiting, in arrival order, and writes
        the bucket once. A hot key costs a write per round trip, not one per request."""
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(bucket.key, []).append((cost, future))
        async with self._lock(bucket.key):
            if not future.done():
                batch = self._waiting.pop(bucket.key)
                try:
                    decisions = await self._take_many(bucket, [c for c, _ in batch])
                except BrokerError as exc:
                    for _, waiter in batch:
                        waiter.set_exception(exc)
                except BaseException:  # cancelled: the next caller decides for the others
                    self._waiting[bucket.key] = batch + self._waiting.get(bucket.key, [])
                    raise
                else:
                    for (_, waiter), decision in zip(batch, decisions, strict=True):
                        waiter.set_result(decision)
        return future.result()

    async def _take_many(self, bucket: Bucket, costs: list[int]) -> list[Decision]:
        key = bucket.key
        state = self._seen.get(key)
        fresh = state is None
        if state is None:
            state = await self._read(key)
        for _ in range(_MAX_TRIES):
            tat, revision = state
            now = time.time()
            decisions: list[Decision] = []
            new_tat = tat
            for cost in costs:
                start = max(new_tat, now)
                after = start + cost * bucket.interval
                over = after - now - bucket.tau
                if over > 1e-9 and not (start == now and cost > bucket.burst):
                    if not fresh:  # refuse on the latest state only, never on a stale one
                        break
                    remaining = max(0, math.floor((bucket.tau - (start - now)) / bucket.interval))
                    decisions.append(Decision(bucket, False, remaining, start - now, over))
                else:
                    new_tat = after
                    remaining = max(0, math.floor((bucket.tau - (after - now)) / bucket.interval))
                    decisions.append(Decision(bucket, True, remaining, after - now, 0.0))
            if len(decisions) == len(costs):
                if new_tat == tat or await self._write(key, new_tat, revision):
                    return decisions
            state, fresh = await self._read(key), True
        raise Unavailable(
            503,
            f"The rate limit `{key}` is being updated by too many processes at once; "
            "retry shortly.",
            type="service_unavailable_error",
            code="rate_limit_contention",
            retryable=True,
            retry_after=0.1,
        )

    async def adjust(self, bucket: Bucket, delta: int) -> None:
        """Give back (negative) or charge (positive) units after the fact: the request
        was admitted with an estimate and its real usage is now known. Adjustments that
        arrive while the bucket is being written are summed into the next write."""
        if delta == 0:
            return
        self._deltas[bucket.key] = self._deltas.get(bucket.key, 0) + delta
        async with self._lock(bucket.key):
            pending = self._deltas.pop(bucket.key, 0)
            if pending:
                await self._adjust(bucket, pending)

    async def _adjust(self, bucket: Bucket, delta: int) -> None:
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
