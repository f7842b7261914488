"""Token buckets shared by every process, in the ``<prefix>_ratelimits`` KV bucket.

Each bucket is GCRA (the generic cell rate algorithm, as in redis-cell): its whole state
is one number, the *theoretical arrival time* ``tat``. A bucket of ``limit`` units per
minute refills one unit every ``T = 60 / limit`` seconds and holds ``burst`` units, i.e.
``tau = burst * T`` seconds of credit. Taking ``cost`` units at ``now`` moves ``tat`` to
``max(tat, now) + cost * T``, allowed while that stays within ``now + tau``.

Updates are compare-and-set on the entry's revision, so any number of ingress and worker
processes admit exactly what the limit allows. Each process remembers the last revision
it saw: with one writer a write is one round trip; a conflict costs a re-read and a retry.

Three things keep a hot key off the shared entry (broker/tenancy/leases.py):

- the takes of one bucket waiting in a process are decided together, in one write;
- that write takes a *lease* beyond them, and the requests that follow are admitted from
  it in memory, without I/O, until it is spent or idle (then it goes back);
- corrections after the fact (a request used fewer tokens than estimated, a refund) go
  into the lease too, and reach the shared entry with its next write or within
  ``leases.IDLE_S``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import struct
import time
from dataclasses import dataclass, field

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker.tenancy.leases import Lease, Leasing
from schemas.errors import BrokerError, Unavailable

log = logging.getLogger(__name__)

_TRIES = 64  # conflicting writes before giving up (each loser re-reads; someone won)


@dataclass(frozen=True, slots=True)
class Bucket:
    """One limit: ``key`` names its KV entry, ``kind`` is "requests" or "tokens"."""

    key: str
    kind: str
    limit: int  # per minute
    burst: int
    owner: str = ""  # whose limit, in messages: "key key_...", "team acme/ml"

    @property
    def interval(self) -> float:
        return 60.0 / self.limit

    @property
    def tau(self) -> float:
        return self.burst * self.interval


@dataclass(slots=True)  # not frozen: one per bucket per admission, and frozen costs 4x
class Decision:
    bucket: Bucket
    allowed: bool
    remaining: int  # units left after this request
    reset_s: float  # seconds until the bucket is full again
    retry_after_s: float  # when refused: seconds until the request would fit


@dataclass(slots=True)
class _Held:
    """What this process holds of one bucket: its lease, and the shared ``tat`` it last
    wrote (which counts the lease as taken)."""

    bucket: Bucket
    lease: Lease = field(default_factory=Lease)
    tat: float = 0.0
    leasing: bool = False  # the last write took a lease (the key is far from its limit)

    def decide(self, now: float) -> Decision:
        """A take admitted from the lease: the bucket's state as if the lease went back."""
        bucket = self.bucket
        interval = 60.0 / bucket.limit  # bucket.interval and .tau, computed once here
        tat = self.tat - self.lease.units * interval
        remaining = max(0, math.floor((bucket.burst * interval - (tat - now)) / interval))
        return Decision(bucket, True, remaining, max(0.0, tat - now), 0.0)


def _pack(tat: float) -> bytes:
    return struct.pack(">d", tat)


def _unpack(value: bytes | None) -> float:
    return struct.unpack(">d", value)[0] if value and len(value) == 8 else 0.0


def _carry(tat: float, units: int, interval: float, now: float) -> float:
    """``tat`` with ``units`` given back (positive) or charged (negative: owed)."""
    if units >= 0:
        return tat - units * interval
    return max(tat, now) - units * interval


class RateLimiter(Leasing):
    def __init__(self, kv: KeyValue) -> None:
        super().__init__()
        self._kv = kv
        self._seen: dict[str, tuple[float, int | None]] = {}  # key -> (tat, revision)
        self._locks: dict[str, asyncio.Lock] = {}  # key -> one write in flight at a time
        self._waiting: dict[str, list[tuple[int, asyncio.Future[Decision]]]] = {}
        self._held: dict[str, _Held] = {}

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _hold(self, bucket: Bucket) -> _Held:
        held = self._held.get(bucket.key)
        if held is None or held.bucket != bucket:  # new, or its limit changed
            if held is not None:
                owed = held.lease.units  # keep what is held or owed
                held = self._held[bucket.key] = _Held(bucket, Lease(units=owed))
            else:
                held = self._held[bucket.key] = _Held(bucket)
        return held

    def leased(self, bucket: Bucket) -> int:
        """Units this process holds of ``bucket`` (negative: owes)."""
        held = self._held.get(bucket.key)
        return held.lease.units if held is not None else 0

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

        From the lease when it holds enough (no I/O). Otherwise the takes of one bucket
        in this process are decided together: the first caller to get the bucket's lock
        decides for everyone waiting, in arrival order, and writes the bucket once."""
        leased = self.take_leased([(bucket, cost)])
        if leased is not None:
            return leased[0]
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
        held = self._hold(bucket)
        lease = held.lease
        carried, lease.units = lease.units, 0  # folded into this write; spent by no one else
        try:
            return await self._decide_and_write(held, costs, carried)
        except BaseException:
            lease.units += carried
            raise

    async def _decide_and_write(
        self, held: _Held, costs: list[int], carried: int, typical: int = 1
    ) -> list[Decision]:
        bucket, lease = held.bucket, held.lease
        key, interval = bucket.key, bucket.interval
        state = self._seen.get(key)
        fresh = state is None
        if state is None:
            state = await self._read(key)
        typical = max(costs, default=typical)
        lease.renew()
        for attempt in range(_TRIES):
            tat, revision = state
            now = time.time()
            base = _carry(tat, carried, interval, now)
            decisions: list[Decision] = []
            new_tat = base
            for cost in costs:
                start = max(new_tat, now)
                after = start + cost * interval
                over = after - now - bucket.tau
                if over > 1e-9 and not (start == now and cost > bucket.burst):
                    if not fresh:  # refuse on the latest state only, never on a stale one
                        break
                    remaining = max(0, math.floor((bucket.tau - (start - now)) / interval))
                    decisions.append(Decision(bucket, False, remaining, start - now, over))
                else:
                    new_tat = after
                    remaining = max(0, math.floor((bucket.tau - (after - now)) / interval))
                    decisions.append(Decision(bucket, True, remaining, after - now, 0.0))
            if len(decisions) == len(costs):
                room = max(0, math.floor((now + bucket.tau - max(new_tat, now)) / interval))
                extra = lease.slice(typical, room) if all(d.allowed for d in decisions) else 0
                if extra:
                    new_tat = max(new_tat, now) + extra * interval
                if new_tat == tat or await self._write(key, new_tat, revision):
                    lease.units += extra
                    lease.granted = max(lease.units, 0)
                    held.tat, held.leasing = new_tat, extra > 0
                    return decisions
            if attempt >= 8:  # many processes on one entry: spread the retries out
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))
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

    def adjust(self, bucket: Bucket, delta: int) -> None:
        """Give back (negative) or charge (positive) units after the fact: the request
        was admitted with an estimate and its real usage is now known. Kept in the lease
        (no I/O): a give-back admits this process's next requests, a charge is paid with
        the next write, and either reaches the shared entry within ``IDLE_S``."""
        if delta:
            lease = self._hold(bucket).lease
            lease.units -= delta
            lease.used_at = time.monotonic()

    async def flush(self, everything: bool = False) -> None:
        """Write back idle leases and debts (``everything``: all of them, now)."""
        now = time.monotonic()
        for held in list(self._held.values()):
            if held.lease.units and (everything or held.lease.idle(now)):
                await self._give_back(held)

    async def _give_back(self, held: _Held) -> None:
        async with self._lock(held.bucket.key):
            units = held.lease.returned()
            if units:
                try:
                    await self._write_back(held, units)
                except BaseException:
                    held.lease.units += units
                    raise

    async def _write_back(self, held: _Held, units: int) -> None:
        key, interval = held.bucket.key, held.bucket.interval
        state = self._seen.get(key) or await self._read(key)
        for _ in range(_TRIES):
            tat, revision = state
            if revision is None:
                return  # nothing recorded (expired): nothing to correct
            new_tat = _carry(tat, units, interval, time.time())
            if await self._write(key, new_tat, revision):
                held.tat = new_tat
                return
            state = await self._read(key)

    def take_leased(self, wanted: list[tuple[Bucket, int]]) -> list[Decision] | None:
        """Every take from this process's leases, or none taken (None): the common case
        decided without a task, a lock or a future."""
        helds = []
        for bucket, cost in wanted:
            held = self._held.get(bucket.key)
            if held is None or held.lease.units < cost:
                return None
            if held.bucket is not bucket:  # the plan is rebuilt every second
                if held.bucket != bucket:
                    return None  # its limit changed
                held.bucket = bucket  # the same limit: compared by identity from now on
            helds.append(held)
        for index, (held, (_, cost)) in enumerate(zip(helds, wanted, strict=True)):
            if not held.lease.spend(cost):  # a bucket named twice, short the second time
                for earlier, (_, spent) in zip(helds[:index], wanted, strict=False):
                    earlier.lease.units += spent
                return None
        now = time.time()
        for held, (bucket, cost) in zip(helds, wanted, strict=True):
            if held.lease.low():
                self.top_up_soon(bucket.key, functools.partial(self._top_up, held, cost))
        return [held.decide(now) for held in helds]

    async def _top_up(self, held: _Held, typical: int) -> None:
        """Add a slice to a lease still in use (spent down to half of what it was given,
        or in debt), while it still admits: one write, like a take of nothing. A debt is
        paid from the slice. Near the limit there is no slice (exact writes)."""
        key = held.bucket.key
        try:
            async with self._lock(key):
                if self._held.get(key) is held and held.lease.low():
                    await self._decide_and_write(held, [], 0, typical)
        except Exception as exc:  # NATS away, or contention: the next take writes itself
            log.debug("rate-limit lease %s not topped up: %s", key, exc)

    async def take_all(self, wanted: list[tuple[Bucket, int]]) -> list[Decision]:
        """Take from every bucket or from none: on a refusal the others are refunded.
        From the leases when they all hold enough: no task per bucket then."""
        leased = self.take_leased(wanted)
        if leased is not None:
            return leased
        decisions = list(await asyncio.gather(*(self.take(b, c) for b, c in wanted)))
        if not all(d.allowed for d in decisions):
            exact = []
            for d, (_, c) in zip(decisions, wanted, strict=True):
                if d.allowed:
                    self.adjust(d.bucket, -c)
                    held = self._held[d.bucket.key]
                    if not held.leasing:  # near the limit: give it back to everyone now
                        exact.append(self._give_back(held))
            await asyncio.gather(*exact)
        return decisions
