"""Leases: a process's slice of a shared limit, spent from memory.

A rate-limit bucket or a budget lives in NATS, shared by every process. Checking it for
every request costs a JetStream round trip, and with many processes writing one entry
they conflict. Instead a process takes a little more than the request needs in the same
write, and admits the requests that follow from that slice without any I/O until it is
spent. What it does not use goes back.

The guarantee stays exact, because every admitted unit was taken from the shared state
by a write that succeeded: leases never let more through than the limit. What they cost
is the other way round: units one process holds are not available to another, so a
request can be refused while another process still holds a few idle units. That is kept
small and short:

- a lease grows only while it is used up quickly (it doubles each time it is renewed
  within ``IDLE_S``; it starts at nothing, one exact write per request);
- it never takes more than ``1 / SHARE`` of what the shared state still had;
- no lease is taken while fewer than ``MIN_ROOM`` requests' worth are left, so near the
  limit every request is decided on the shared state itself;
- a lease not used for ``IDLE_S`` is returned, and so is what a process owes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from broker.nats.tasks import cancel_and_wait

log = logging.getLogger(__name__)

IDLE_S = 0.5  # a lease unused this long is returned
SHARE = 8  # a lease takes at most this fraction of what is left
MIN_ROOM = 64  # below this many requests' worth left, no lease: exact writes


@dataclass(slots=True)
class Lease:
    """Units taken from the shared state and not yet spent here (negative: owed to it,
    e.g. a request used more tokens than its estimate), and how large to grow."""

    units: int = 0
    size: int = 0  # what the next renewal asks for beyond the requests at hand
    granted: int = 0  # units at the last renewal (a lease at half of it is topped up)
    renewed_at: float = 0.0  # monotonic
    used_at: float = 0.0  # monotonic

    def spend(self, cost: int) -> bool:
        """Take ``cost`` from the slice, if it holds that much."""
        if self.units < cost:
            return False
        self.units -= cost
        self.used_at = time.monotonic()
        return True

    def renew(self) -> None:
        """A renewal begins: renewed again within ``IDLE_S``, the lease was used up
        quickly (demand is high) and grows."""
        now = time.monotonic()
        if now - self.renewed_at < IDLE_S:
            self.size = max(1, 2 * self.size)
        self.renewed_at = self.used_at = now

    def slice(self, cost: int, room: int) -> int:
        """How much to take beyond the requests at hand (each about ``cost``), given
        ``room`` units still left in the shared state after them."""
        if room < MIN_ROOM * max(1, cost):
            return 0
        return min(self.size * max(1, cost), room // SHARE)

    def low(self) -> bool:
        """Spent down to below half of what it was last given: time to top it up."""
        return 2 * self.units < self.granted

    def idle(self, now: float) -> bool:
        """Should the slice go back (unused for ``IDLE_S``), or is a debt to pay?"""
        if self.units < 0:
            return True
        return self.units > 0 and now - self.used_at >= IDLE_S

    def returned(self) -> int:
        """Empty the slice for a write back (the units, or minus the debt); a lease
        returned unused shrinks."""
        units, self.units = self.units, 0
        if units > 0:
            self.size //= 2
        return units


class Leasing:
    """What a holder of leases does besides admitting: return idle leases (and pay
    debts) every ``IDLE_S / 2`` in the background, and everything when it stops (a
    process that stops holds nothing)."""

    _sweeper: asyncio.Task[None] | None = None

    def __init__(self) -> None:
        self._topping: dict[str, asyncio.Future[None]] = {}  # key -> top-up under way

    def top_up_soon(self, key: str, top_up: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``top_up()`` in the background, unless one for ``key`` is under way."""
        if key not in self._topping:
            future = self._topping[key] = asyncio.ensure_future(top_up())
            future.add_done_callback(lambda _: self._topping.pop(key, None))

    async def flush(self, everything: bool = False) -> None:
        """Write back idle leases and debts (``everything``: all of them, now)."""
        raise NotImplementedError

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        """Let top-ups under way land in their leases, then give everything back."""
        await asyncio.gather(*self._topping.values(), return_exceptions=True)
        await cancel_and_wait(self._sweeper)
        with contextlib.suppress(Exception):  # NATS gone: the leases lapse with it
            await self.flush(everything=True)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(IDLE_S / 2)
            try:
                await self.flush()
            except Exception as exc:  # NATS away: the leases wait for the next round
                log.warning("%s: leases not written back: %s", type(self).__name__, exc)
