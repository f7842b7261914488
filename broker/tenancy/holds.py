"""Budget and quota holds: spending reserved at admission, so concurrency cannot bypass it.

A budget (or token quota) of one period is a *pool*. Its state is two JetStream counters
in the usage stream (broker/tenancy/usage.py): what was spent (``usage.a...``, recorded by
workers) and what is held (``usage.h...``): reserved by admissions whose requests have
not been settled yet, and leased by processes. A request is admitted while spent + held,
without its own hold, is below the limit, as a budget always was ("not spent yet"); its
hold is its estimate (prompt tokens plus its output limit, at the model's dearest price).
The worker that answers it records the real cost and releases the hold in one group of
publishes, the cost first: before the reply leaves, so the caller's next request sees
both, or, when every pool the request counts against had half its limit free at
admission (``roomy``, signed into its tenancy), with the next usage batch (0.2 s): the
hold then errs by refusing for that long, and only where half the limit is still free.

Counters add atomically on the server (``Nats-Incr`` answers with the new total), so
reservations of any number of processes never conflict and never over-admit: 200
concurrent requests against a budget that fits 10 get 10 admissions. Each process leases
holds like rate limits (broker/tenancy/leases.py): one increment reserves for many
requests, which are then admitted from memory, and what is left goes back when idle.

Bounds (docs/tenancy.md): a request costing more than its hold overshoots by the
difference, like the last request a budget admits; a hold whose request never reaches a
worker (it expired in the queue past ``max_queue_age_s``) or whose process died with a
lease stays held until the period ends: that errs by refusing, never by admitting.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from broker.tenancy.leases import Lease, Leasing
from broker.tenancy.usage import counter_value, read_counter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Pool:
    """One budget or quota in one period: its counters and its limit (nano-USD for a
    budget, tokens for a quota)."""

    spent: str  # the usage aggregate workers add to
    held: str  # the holds counter
    limit: int
    unit: str  # "cost" or "tokens": which of a request's holds it takes


@dataclass(frozen=True, slots=True)
class Reserved:
    """The outcome of a reservation: admitted or not, and the pool's spent and held
    totals when it was decided (for the refusal's message)."""

    allowed: bool
    spent: int = 0
    held: int = 0


class Holds(Leasing):
    def __init__(self, nc: NATS, js: JetStreamContext, stream: str) -> None:
        super().__init__()
        self._nc = nc
        self._js = js
        self._stream = stream
        self._leases: dict[str, Lease] = {}  # held subject -> this process's lease
        self._room: dict[str, int] = {}  # held subject -> room left at the last renewal
        self._locks: dict[str, asyncio.Lock] = {}

    def roomy(self, pool: Pool) -> bool:
        """Did the pool have half its limit free at this process's last renewal? Then a
        request's holds may stay a batch interval longer (usage settled later) without
        refusing anyone: what is left is at least as much as was already free."""
        return 2 * self._room.get(pool.held, 0) >= pool.limit

    def leased(self, pool: Pool) -> int:
        lease = self._leases.get(pool.held)
        return lease.units if lease is not None else 0

    def reserve_leased(self, wanted: list[tuple[Pool, int]]) -> bool:
        """Hold every amount from this process's leases, or none (False): the common case
        decided without a task or a lock. A lease down to half of what it was last
        given is topped up in the background (``_top_up``), so that under load the
        requests that follow do not find it empty and queue behind its renewal."""
        leases = self._leases
        for pool, amount in wanted:
            lease = leases.get(pool.held)
            if lease is None or lease.units < amount:
                return False
        for index, (pool, amount) in enumerate(wanted):
            lease = leases[pool.held]
            if not lease.spend(amount):  # a pool named twice
                for earlier, spent in wanted[:index]:
                    self.give_back(earlier, spent)
                return False
            if lease.low():
                self.top_up_soon(pool.held, functools.partial(self._top_up, pool, amount))
        return True

    async def _top_up(self, pool: Pool, amount: int) -> None:
        """Add a slice to a lease still in use, while it still admits: one increment,
        of which only what fits under the limit is kept (the rest goes back at once).
        Near the limit a lease gets no slice, and requests are decided exactly."""
        try:
            lock = self._locks.setdefault(pool.held, asyncio.Lock())
            async with lock:
                lease = self._leases[pool.held]
                if not lease.low():
                    return  # renewed meanwhile
                lease.renew()
                extra = lease.slice(amount, self._room.get(pool.held, 0))
                if extra <= 0:
                    return
                held, spent = await asyncio.gather(self._add(pool.held, extra), self._spent(pool))
                room = pool.limit - (spent + held - extra)  # what was left before the slice
                kept = max(0, min(extra, room))
                if kept < extra:
                    await self._add(pool.held, kept - extra)
                lease.units += kept
                lease.granted = lease.units
                self._room[pool.held] = max(0, room - kept)
        except Exception as exc:  # NATS away: the next request renews the lease itself
            log.debug("hold lease %s not topped up: %s", pool.held, exc)

    async def reserve(self, pool: Pool, amount: int) -> Reserved:
        """Hold ``amount`` of the pool for one request, if spent + held is below the
        limit: from this process's lease when it has enough, else with one increment."""
        lease = self._leases.get(pool.held)
        if lease is None:
            lease = self._leases[pool.held] = Lease()
        if lease.spend(amount):
            return Reserved(True)
        lock = self._locks.get(pool.held)
        if lock is None:
            lock = self._locks[pool.held] = asyncio.Lock()
        async with lock:
            if lease.spend(amount):  # renewed while this one waited
                return Reserved(True)
            return await self._renew(pool, lease, amount)

    async def _renew(self, pool: Pool, lease: Lease, amount: int) -> Reserved:
        lease.renew()
        carried, lease.units = lease.units, 0  # less than amount: used towards it
        extra = lease.slice(amount, self._room.get(pool.held, 0))
        asked = amount - carried + extra
        try:
            held, spent = await asyncio.gather(self._add(pool.held, asked), self._spent(pool))
        except BaseException:
            lease.units += carried  # still ours (whether the add was stored is unknown)
            raise
        before = spent + held - carried - asked  # everyone else's holds, and all spending
        if before >= pool.limit:
            await self._add(pool.held, -(asked + carried))
            return Reserved(False, spent, held - carried - asked)
        room = pool.limit - before - amount
        kept = max(0, min(extra, room))
        if kept < extra:  # someone took the room meanwhile: keep only what fits
            await self._add(pool.held, kept - extra)
        lease.units = lease.granted = kept
        self._room[pool.held] = max(0, room - kept)
        return Reserved(True, spent, before - spent)

    def give_back(self, pool: Pool, amount: int) -> None:
        """A reservation not used after all (another check refused the request): it
        admits this process's next requests, or goes back with the lease."""
        lease = self._leases.get(pool.held)
        if lease is not None and amount > 0:
            lease.units += amount
            lease.used_at = time.monotonic()

    async def release(self, increments: dict[str, int]) -> None:
        """Add to hold counters without waiting for the store (a release that is lost
        errs by refusing, never by admitting)."""
        for subject, amount in increments.items():
            await self._nc.publish(subject, b"", headers={"Nats-Incr": str(amount)})

    async def used(self, pool: Pool) -> tuple[int, int]:
        """(spent, held) of the pool, read from the server now."""
        spent, held = await asyncio.gather(
            self._spent(pool), read_counter(self._js, self._stream, pool.held)
        )
        return spent, held

    async def _add(self, subject: str, amount: int) -> int:
        """Add to a counter; its new total."""
        reply = await self._nc.request(subject, b"", timeout=5, headers={"Nats-Incr": str(amount)})
        return counter_value(reply.data)

    async def _spent(self, pool: Pool) -> int:
        return await read_counter(self._js, self._stream, pool.spent)

    async def flush(self, everything: bool = False) -> None:
        """Return idle leases (``everything``: all of them, now)."""
        now = time.monotonic()
        for subject, lease in list(self._leases.items()):
            if lease.units > 0 and (everything or lease.idle(now)):
                units = lease.returned()
                try:
                    await self._add(subject, -units)
                except BaseException:
                    lease.units += units
                    raise
