"""Priority lanes: interactive and batch requests share one deployment's slots.

A deployment may run ``capacity`` provider calls at once. Interactive requests (HTTP and
NATS request-reply, subject ``<prefix>.chat.<model>``) are pulled as if batch work did not
exist; batch requests (``<prefix>.bulk.<model>``) are pulled only into slots nothing
interactive holds or waits for. When batch work fills every slot and an interactive
request arrives, it takes the next slot that frees: it starts within one upstream
latency, and batch work gets the slots back when interactive traffic leaves them idle.
"""

from __future__ import annotations

import asyncio
import collections
import enum
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Lane(enum.Enum):
    INTERACTIVE = "interactive"
    BATCH = "batch"

    # Members are singletons: hash by identity in C, not Enum's Python-level name hash
    # (a lane is a dict key several times per request).
    __hash__ = object.__hash__


class PrioritySlots:
    """A semaphore whose interactive waiters always go before batch waiters."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.busy = 0
        self.busy_by_lane = {Lane.INTERACTIVE: 0, Lane.BATCH: 0}
        self._waiters: dict[Lane, collections.deque[asyncio.Future[None]]] = {
            Lane.INTERACTIVE: collections.deque(),
            Lane.BATCH: collections.deque(),
        }

    def waiting(self, lane: Lane) -> int:
        return len(self._waiters[lane])

    def free(self) -> int:
        return max(0, self.capacity - self.busy)

    @asynccontextmanager
    async def slot(self, lane: Lane) -> AsyncIterator[None]:
        await self.acquire(lane)
        try:
            yield
        finally:
            self.release(lane)

    def try_acquire(self, lane: Lane) -> bool:
        """Take a free slot now if nobody is ahead in the line (the hot path: no await)."""
        ahead = self._waiters[Lane.INTERACTIVE] if lane is Lane.BATCH else ()
        if self.busy < self.capacity and not self._waiters[lane] and not ahead:
            self._take(lane)
            return True
        return False

    async def acquire(self, lane: Lane) -> None:
        if self.try_acquire(lane):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[lane].append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(lane)  # granted and cancelled at once: give it back
            else:
                self._waiters[lane].remove(waiter)
            raise

    def _take(self, lane: Lane) -> None:
        self.busy += 1
        self.busy_by_lane[lane] += 1

    def release(self, lane: Lane) -> None:
        self.busy -= 1
        self.busy_by_lane[lane] -= 1
        self._wake()

    def _wake(self) -> None:
        for lane in (Lane.INTERACTIVE, Lane.BATCH):
            queue = self._waiters[lane]
            while queue and self.busy < self.capacity:
                waiter = queue.popleft()
                if not waiter.done():
                    self._take(lane)
                    waiter.set_result(None)
            if queue:
                return  # interactive still waiting: batch waiters must not jump ahead
