"""Waits that end at a deadline, with one sweeper instead of a timer each.

``asyncio.timeout`` and ``wait_for`` cost 3-5 µs a use (a Timeout or a second future,
a timer handle, a cancel and its bookkeeping); the ingress paid two per request, for a
publish acknowledgement and a reply that nearly always come in milliseconds. Here a
waited-on future is noted with its deadline, and one task, running only while there are
waits, fails those past it with ``TimeoutError`` every ``tick_s``. Deadlines are met
within a tick: fine for waits of seconds, not for sub-tick ones.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from broker.nats.tasks import cancel_and_wait

TICK_S = 0.05
T = TypeVar("T")


class Expiry:
    def __init__(self, tick_s: float = TICK_S) -> None:
        self._tick_s = tick_s
        self._deadlines: dict[asyncio.Future[Any], float] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._deadlines)

    async def wait(self, future: asyncio.Future[T], within: float) -> T:
        """``await future``, or ``TimeoutError`` once ``within`` seconds (and at most a
        tick) have passed; a cancelled caller cancels the future, as ``wait_for`` does."""
        loop = asyncio.get_running_loop()
        self._deadlines[future] = loop.time() + within
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep())
        try:
            return await future
        finally:
            self._deadlines.pop(future, None)

    async def close(self) -> None:
        await cancel_and_wait(self._sweeper)
        self._sweeper = None

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        deadlines = self._deadlines
        while deadlines:
            await asyncio.sleep(self._tick_s)
            now = loop.time()
            for future, deadline in list(deadlines.items()):
                if deadline <= now:
                    del deadlines[future]
                    if not future.done():
                        future.set_exception(TimeoutError())
