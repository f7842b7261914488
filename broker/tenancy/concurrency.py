"""Requests in flight per key and tenant, capped across every process (``max_inflight``).

A cap is one KV entry, ``inflight.<scope>.<id>`` in the ratelimits bucket, recording
what each process holds of it: ``{process: [slots, until_ms]}``. A process takes slots
in compare-and-set writes, several at a time, and admits requests from them in memory. A
finished request's slot goes to the next request waiting in this process, or back to the
entry once idle. Holdings are renewed every ``RENEW_S`` and lapse ``HOLD_TTL_S`` after
their process stops renewing them (it died), so a crash frees its slots.

Requests over the cap wait here, first come first served, until a slot frees or their
deadline passes (then a 429 ``concurrency_limit_exceeded``). So a tenant flooding a model
holds at most its cap of the deployments' slots, and the requests of everyone else pass
its backlog: they are queued for the workers while its extra requests wait for a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker.nats.tasks import cancel_and_wait
from schemas.errors import BrokerError, InvalidRequest, RateLimited

log = logging.getLogger(__name__)

HOLD_TTL_S = 10.0  # a holding not renewed for this long is free for others
RENEW_S = 0.5  # holdings renewed, and idle slots given back, this often
IDLE_S = 0.25  # slots unused this long go back to the entry
POLL_S = 0.05  # a process with requests waiting looks at the entry this often
_TRIES = 16


class ClientGone(InvalidRequest):
    """The caller hung up while waiting (nginx's 499: nobody reads the answer)."""


class Holding(msgspec.Struct, array_like=True):
    slots: int
    until_ms: int


_decoder = msgspec.json.Decoder(dict[str, Holding])
_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class _Cap:
    key: str
    limit: int
    held: int = 0  # slots this process holds in the entry
    busy: int = 0  # of them, in use
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    revision: int | None = None
    holdings: dict[str, Holding] = field(default_factory=dict)  # as last read
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    idle_at: float = 0.0
    poller: asyncio.Task[None] | None = None


class Slot:
    """One request's place under a cap; ``release`` it when the request has ended."""

    __slots__ = ("_cap", "_owner", "released")

    def __init__(self, owner: Concurrency, cap: _Cap) -> None:
        self._owner, self._cap, self.released = owner, cap, False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._owner._release(self._cap)


class Concurrency:
    """This process's share of every ``max_inflight`` cap, and its waiting requests."""

    def __init__(self, kv: KeyValue, owner: str | None = None) -> None:
        self._kv = kv
        self._me = owner or f"{os.getpid()}-{secrets.token_hex(4)}"
        self._caps: dict[str, _Cap] = {}
        self._renewer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_loop())

    async def stop(self) -> None:
        await cancel_and_wait(
            self._renewer, *(cap.poller for cap in self._caps.values() if cap.poller)
        )
        for cap in self._caps.values():
            for waiter in cap.waiters:
                waiter.cancel()
            cap.busy = 0
            with contextlib.suppress(Exception):  # NATS gone: the holding lapses
                await self._write(cap, 0)

    async def acquire(
        self,
        key: str,
        limit: int,
        wait_s: float,
        owner: str,
        gone: Callable[[], Awaitable[object]] | None = None,
    ) -> Slot:
        """A slot under the cap ``key`` of ``limit`` requests, waiting up to ``wait_s``
        seconds for one; ``owner`` names the cap in the 429 when none freed in time.
        ``gone`` returns when the caller has left (its HTTP client hung up): the wait
        ends then, and the request is not run for nobody."""
        cap = self._caps.get(key)
        if cap is None:
            cap = self._caps[key] = _Cap(key, limit)
        cap.limit = limit  # changed in the key or tenant: holds from now on
        if cap.busy < cap.held and not cap.waiters:
            cap.busy += 1
            return Slot(self, cap)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        cap.waiters.append(waiter)
        if cap.poller is None or cap.poller.done():
            cap.poller = asyncio.create_task(self._poll(cap))
        left = asyncio.ensure_future(gone()) if gone is not None else None
        watched: set[asyncio.Future[Any]] = {waiter} if left is None else {waiter, left}
        try:
            await asyncio.wait(
                watched,
                timeout=max(0.0, wait_s),
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:
            self._leave(cap, waiter)
            raise
        finally:
            await cancel_and_wait(left)
        if waiter.done() and not waiter.cancelled():
            return Slot(self, cap)
        self._leave(cap, waiter)
        if left is not None and left.done() and not left.cancelled():
            raise ClientGone(
                499,
                "The client left while its request waited for a slot.",
                code="client_closed_request",
            )
        raise _refused(owner, limit, wait_s)

    def _leave(self, cap: _Cap, waiter: asyncio.Future[None]) -> None:
        """A waiter gives up: a slot handed to it at that moment goes to the next one."""
        if waiter.done() and not waiter.cancelled():
            self._release(cap)
            return
        waiter.cancel()
        with contextlib.suppress(ValueError):
            cap.waiters.remove(waiter)

    def _release(self, cap: _Cap) -> None:
        while cap.waiters and cap.busy <= cap.limit:  # (over it after the cap was lowered)
            waiter = cap.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on, still busy
                return
        cap.busy -= 1
        cap.idle_at = time.monotonic()

    async def _poll(self, cap: _Cap) -> None:
        """While requests wait: take free slots from the entry, as many as they need."""
        while cap.waiters:
            try:
                await self._grow(cap)
            except Exception as exc:  # NATS away: the waiters' deadlines still hold
                log.debug("concurrency cap %s: %s", cap.key, exc)
            if cap.waiters:
                await asyncio.sleep(POLL_S)

    async def _grow(self, cap: _Cap) -> None:
        async with cap.lock:
            for _ in range(_TRIES):
                waiting = sum(1 for w in cap.waiters if not w.done())
                if not waiting:
                    return
                await self._read(cap)
                now_ms = time.time() * 1000
                others = sum(
                    h.slots
                    for owner, h in cap.holdings.items()
                    if owner != self._me and h.until_ms > now_ms
                )
                free = cap.limit - others - cap.held
                if free <= 0:
                    return
                take = min(free, waiting)
                if await self._write(cap, cap.held + take):
                    cap.held += take
                    for _ in range(take):
                        self._hand_out(cap)
                    return

    def _hand_out(self, cap: _Cap) -> None:
        while cap.waiters:
            waiter = cap.waiters.popleft()
            if not waiter.done():
                cap.busy += 1
                waiter.set_result(None)
                return

    async def _read(self, cap: _Cap) -> None:
        try:
            entry = await self._kv.get(cap.key)
        except KeyNotFoundError:
            cap.holdings, cap.revision = {}, None
            return
        try:
            cap.holdings = _decoder.decode(entry.value or b"{}")
        except msgspec.DecodeError:
            cap.holdings = {}
        cap.revision = entry.revision

    async def _write(self, cap: _Cap, slots: int) -> bool:
        """Record ``slots`` as this process's holding (dropping lapsed ones of others),
        compare-and-set on the revision last read; False on a conflict (read again)."""
        now_ms = int(time.time() * 1000)
        holdings = {o: h for o, h in cap.holdings.items() if o != self._me and h.until_ms > now_ms}
        if slots:
            holdings[self._me] = Holding(slots, now_ms + int(HOLD_TTL_S * 1000))
        value = _encoder.encode(holdings)
        try:
            if cap.revision is None:
                cap.revision = await self._kv.create(cap.key, value)
            else:
                cap.revision = await self._kv.update(cap.key, value, last=cap.revision)
        except KeyWrongLastSequenceError:
            await self._read(cap)
            return False
        cap.holdings = holdings
        return True

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            for cap in list(self._caps.values()):
                try:
                    await self._renew(cap)
                except Exception as exc:  # NATS away: retry next round, within the TTL
                    log.debug("concurrency cap %s not renewed: %s", cap.key, exc)

    async def _renew(self, cap: _Cap) -> None:
        """Renew this process's holding, giving back the slots idle for ``IDLE_S``."""
        if not cap.held:
            return
        async with cap.lock:
            for _ in range(_TRIES):
                keep = cap.held
                if not cap.waiters and time.monotonic() - cap.idle_at >= IDLE_S:
                    keep = cap.busy
                if await self._write(cap, keep):
                    cap.held = keep
                    return


def _refused(owner: str, limit: int, waited: float) -> BrokerError:
    return RateLimited(
        429,
        f"The {owner} has {limit} requests in flight, its limit, and none finished within "
        f"{waited:.0f}s; retry later or lower the concurrency.",
        type="rate_limit_error",
        code="concurrency_limit_exceeded",
        retryable=True,
        retry_after=1.0,
    )
