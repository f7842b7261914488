"""Waits that end at a deadline, with one sweeper instead of a timer each.

``asyncio.timeout`` and ``wait_for`` cost 3-5 µs a use (a Timeout or a second future,
a timer handle, a cancel and its bookkeeping); the ingress paid two per request, for a
publish acknowledgement and a reply that nearly always come in milliseconds, and a
worker one per provider call. Here a waited-on future (or a block of code, with
:meth:`Expiry.within`) is noted with its deadline, and one task, running only while
there are waits, fails those past it with ``TimeoutError`` every ``tick_s``. Deadlines
are met within a tick: fine for waits of seconds, not for sub-tick ones.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, TypeVar

from broker.nats.tasks import cancel_and_wait

TICK_S = 0.05
T = TypeVar("T")


class Expiry:
    def __init__(self, tick_s: float = TICK_S) -> None:
        self._tick_s = tick_s
        self._deadlines: dict[asyncio.Future[Any] | Within, float] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._deadlines)

    async def wait(self, future: asyncio.Future[T], within: float) -> T:
        """``await future``, or ``TimeoutError`` once ``within`` seconds (and at most a
        tick) have passed; a cancelled caller cancels the future, as ``wait_for`` does."""
        self._note(future, within)
        try:
            return await future
        finally:
            self._deadlines.pop(future, None)

    def within(self, seconds: float | None) -> Within:
        """``async with expiry.within(s):`` as ``asyncio.timeout(s)``: past the deadline
        (within a tick) the task is cancelled and the block raises ``TimeoutError``;
        ``None`` sets no deadline."""
        return Within(self, seconds)

    def _note(self, key: asyncio.Future[Any] | Within, within: float) -> None:
        loop = asyncio.get_running_loop()
        self._deadlines[key] = loop.time() + within
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep())

    async def close(self) -> None:
        await cancel_and_wait(self._sweeper)
        self._sweeper = None

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        deadlines = self._deadlines
        while deadlines:
            await asyncio.sleep(self._tick_s)
            now = loop.time()
            for key, deadline in list(deadlines.items()):
                if deadline <= now:
                    del deadlines[key]
                    if isinstance(key, Within):
                        key.expire()
                    elif not key.done():
                        key.set_exception(TimeoutError())


class Within:
    """A block under a deadline (``Expiry.within``); the same cancel-and-uncancel dance
    as ``asyncio.Timeout``, so a cancellation from outside still cancels."""

    __slots__ = ("_cancelling", "_expiry", "_seconds", "_task", "expired")

    def __init__(self, expiry: Expiry, seconds: float | None) -> None:
        self._expiry = expiry
        self._seconds = seconds
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self.expired = False

    async def __aenter__(self) -> Within:
        if self._seconds is not None:
            task = asyncio.current_task()
            assert task is not None, "Expiry.within outside a task"
            self._task, self._cancelling = task, task.cancelling()
            self._expiry._note(self, self._seconds)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._task is None:
            return
        self._expiry._deadlines.pop(self, None)
        if self.expired:
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def expire(self) -> None:
        if self._task is not None and not self._task.done():
            self.expired = True
            self._task.cancel()
