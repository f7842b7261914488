"""A continuous pull consumer that never holds more messages than its handler may run.

nats-py offers batch ``fetch()``; a worker wants the ``Consume`` model of the newer NATS
clients instead: keep pull "credit" outstanding for exactly the free handler slots, so a
message starts the moment both it and a slot exist, and nothing extra sits in memory.

Accounting: ``outstanding`` is credit asked for and not yet delivered. JetStream answers
an expired or cancelled pull request with a status message carrying
``Nats-Pending-Messages``, the credit it did not use, which is subtracted. A watchdog
resets credit that a disconnect silently swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)

Handler = Callable[[Msg], Awaitable[None]]

_STATUS = "Status"
_PENDING = "Nats-Pending-Messages"
_encoder = msgspec.json.Encoder()

WATCH_PERIOD_S = 1.0


class PullRequest(msgspec.Struct, omit_defaults=True):
    """Body of ``$JS.API.CONSUMER.MSG.NEXT``: ``expires`` is in nanoseconds."""

    batch: int
    expires: int


class PullConsumer:
    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        capacity: int,
        handler: Handler,
        *,
        expires: float = 5.0,
        gate: Callable[[], int] | None = None,
        on_done: Callable[[], None] | None = None,
        weigh: Callable[[Msg], int] | None = None,
        unit: int = 1,
    ) -> None:
        """``gate``, when given, caps the credit further: it returns how many more
        messages this consumer may take right now (e.g. slots a higher-priority lane
        leaves idle, or what a provider's rate ceiling allows). ``on_done`` runs after
        each handled message, e.g. to let a lower-priority consumer take the slot.

        ``weigh`` counts a message as that many requests (a block of batch lines), and
        ``unit`` is what a message is expected to weigh: ``capacity``, ``inflight`` and
        the gate are then in requests, and credit is asked for in messages of ``unit``
        (rounded up, so a pool may hold up to ``unit - 1`` requests over its capacity;
        they wait for a slot in memory)."""
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._nc = nc
        self._api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._capacity = capacity
        self._handler = handler
        self._gate = gate
        self._on_done = on_done
        self._weigh = weigh
        self._unit = max(1, unit)
        self._expires = expires
        self._min_refill = max(1, capacity // 4)
        self._inflight = 0
        self._outstanding = 0
        self._last_heard = time.monotonic()
        self._inbox = ""
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._running = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def capacity(self) -> int:
        return self._capacity

    def set_capacity(self, capacity: int) -> None:
        """Change how many messages may be in hand (0 pauses pulling, e.g. breaker open).

        Credit already outstanding is not recalled; it expires within ``expires``.
        """
        self._capacity = max(0, capacity)
        self._min_refill = max(1, self._capacity // 4)
        self.kick()

    def kick(self) -> None:
        """Ask for more messages now if there is room: the gate's answer changed."""
        if self._running and self._wanted() > 0:
            task = asyncio.ensure_future(self._refill())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        self._running = True
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_message)
        self._watchdog = asyncio.create_task(self._watch())
        await self._refill()

    async def stop(self, grace: float = 30.0) -> None:
        """Stop pulling, let running handlers finish (up to ``grace`` seconds)."""
        self._running = False
        if self._watchdog:
            self._watchdog.cancel()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        for task in list(self._tasks):
            task.cancel()

    async def _on_message(self, msg: Msg) -> None:
        self._last_heard = time.monotonic()
        headers = msg.headers
        if headers and _STATUS in headers and not msg.data:
            self._on_status(headers)
            await self._refill()
            return
        self._outstanding = max(0, self._outstanding - 1)
        if not self._running:
            return  # unsubscribed; JetStream redelivers it after ack_wait
        weight = self._weigh(msg) if self._weigh is not None else 1
        self._inflight += weight
        self._idle.clear()
        task = asyncio.create_task(self._run(msg, weight))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_status(self, headers: dict[str, str]) -> None:
        status = headers.get(_STATUS, "")
        if status == "100":  # idle heartbeat
            return
        pending = headers.get(_PENDING)
        if pending is not None:
            self._outstanding = max(0, self._outstanding - int(pending))
        elif status in {"408", "409"}:
            self._outstanding = 0
        if status not in {"404", "408"}:
            log.warning("pull %s: status %s %s", self._api, status, headers.get("Description"))

    async def _run(self, msg: Msg, weight: int) -> None:
        try:
            await self._handler(msg)
        except Exception:
            log.exception("pull handler failed on %s", msg.subject)
        finally:
            self._inflight -= weight
            if self._inflight == 0:
                self._idle.set()
            if self._on_done is not None:
                self._on_done()
            await self._refill()

    def _wanted(self) -> int:
        """Credit worth asking for now, in messages: 0 while a small top-up would only
        add chatter."""
        unit = self._unit
        asked = self._outstanding * unit
        free = self._capacity - self._inflight - asked
        if self._gate is not None:
            free = min(free, self._gate() - asked)
        if free <= 0 or (free < self._min_refill and self._outstanding > 0):
            return 0
        return free if unit == 1 else -(-free // unit)

    async def _refill(self) -> None:
        if not self._running or self._nc.is_closed or not self._nc.is_connected:
            return
        free = self._wanted()
        if free <= 0:
            return
        self._outstanding += free
        request = PullRequest(batch=free, expires=int(self._expires * 1e9))
        try:
            await self._nc.publish(self._api, _encoder.encode(request), reply=self._inbox)
        except Exception as exc:  # disconnected: the watchdog asks again
            self._outstanding -= free
            log.debug("pull request failed: %s", exc)

    async def _watch(self) -> None:
        """Re-arm credit lost to a disconnect: at once after a reconnect (the server forgot
        our pull requests), or when nothing was heard for two pull expiries."""
        reconnects = self._nc.stats["reconnects"]
        while self._running:
            await asyncio.sleep(WATCH_PERIOD_S)
            silent = time.monotonic() - self._last_heard > 2 * self._expires + 1
            if self._nc.stats["reconnects"] != reconnects or silent:
                reconnects = self._nc.stats["reconnects"]
                self._outstanding = 0
                self._last_heard = time.monotonic()
            await self._refill()
