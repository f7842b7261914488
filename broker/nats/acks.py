"""Facts JetStream writes into a delivered message's ack subject, read without parsing
all of ``Msg.metadata`` (which builds datetimes) on the hot path; and acks that survive
a consumer leader moving to another node.

    $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
    $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<stream seq>...  (v2)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError

from broker.nats.tasks import cancel_and_wait


def identity(ack_subject: str | None) -> tuple[str, int, int] | None:
    """(stream, stream sequence, stored ns): the same on every redelivery of a message,
    and different for a new message that reuses a sequence a crash gave back."""
    parsed = _tokens(ack_subject)
    if parsed is None:
        return None
    tokens, base = parsed
    try:
        return tokens[base], int(tokens[base + 3]), int(tokens[base + 5])
    except ValueError:
        return None


def _tokens(ack_subject: str | None) -> tuple[list[str], int] | None:
    """The tokens and the index of the stream name, or None if not an ack subject."""
    if not ack_subject or not ack_subject.startswith("$JS.ACK."):
        return None
    tokens = ack_subject.split(".")
    if len(tokens) == 9:
        return tokens, 2
    if len(tokens) >= 11:
        return tokens, 4
    return None


def delivery_count(ack_subject: str | None) -> int:
    """How many times this message was delivered, this time included (1 if unknown)."""
    parsed = _tokens(ack_subject)
    if parsed is None:
        return 1
    tokens, base = parsed
    try:
        return int(tokens[base + 2])
    except ValueError:
        return 1


def stream_name(ack_subject: str | None) -> str | None:
    parsed = _tokens(ack_subject)
    return None if parsed is None else parsed[0][parsed[1]]


def stream_sequence(ack_subject: str | None) -> int | None:
    """The message's sequence in its stream: the same on every redelivery."""
    parsed = _tokens(ack_subject)
    if parsed is None:
        return None
    tokens, base = parsed
    try:
        return int(tokens[base + 3])
    except ValueError:
        return None


SWEEP_S = 0.1  # how often unconfirmed acks are looked at (resent, or given up)
_NO_RESPONDERS = "503"


@dataclass(slots=True)
class _Unconfirmed:
    subject: str
    answered: asyncio.Future[bool]
    sent: float
    deadline: float


class Confirmation:
    """An ack sent by ``AckConfirmer.send``, its confirmation still to be awaited."""

    __slots__ = ("_answered", "_pending", "_token")

    def __init__(
        self,
        pending: dict[str, _Unconfirmed],
        token: str = "",
        answered: asyncio.Future[bool] | None = None,
    ) -> None:
        self._pending, self._token, self._answered = pending, token, answered

    async def confirmed(self) -> bool:
        """True once JetStream confirmed the ack; False if it did not in time (or the
        message had no ack subject)."""
        if self._answered is None:
            return False
        try:
            return await self._answered
        finally:
            self._pending.pop(self._token, None)


class AckConfirmer:
    """Acks JetStream confirms, sent again until it does.

    A plain ack is fire-and-forget: if the consumer's leader dies (a cluster node
    restarting) or the connection drops, the ack is lost and the answered request is
    redelivered and answered a second time. Acks are idempotent, so repeating one until
    the (new) leader confirms it turns a node failure into a pause instead of duplicate
    work. One inbox subscription receives every confirmation of the connection, and
    one sweeper resends acks unconfirmed for ``attempt_s`` and gives up those past
    their ``within``.

    ``nc.request`` per ack paid a random token, two futures, a done callback and a
    timer each: 7% of a worker's CPU on the batch lane, for a confirmation that comes
    back within a millisecond nearly every time.
    """

    def __init__(self, nc: NATS, attempt_s: float = 1.0) -> None:
        self._nc = nc
        self._attempt_s = attempt_s
        self._prefix = ""
        self._tokens = itertools.count()
        self._pending: dict[str, _Unconfirmed] = {}
        self._sub: Subscription | None = None
        self._opening: asyncio.Lock | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Acks sent and not yet confirmed or given up."""
        return len(self._pending)

    async def ack(self, msg: Msg, within: float) -> bool:
        """Ack ``msg``; True once JetStream confirmed it, False if no confirmation came
        within ``within`` seconds (or the connection closed)."""
        return await (await self.send(msg, within)).confirmed()

    async def send(self, msg: Msg, within: float) -> Confirmation:
        """Ack ``msg`` now (it leaves with whatever the connection writes next, a reply
        published just before it included) and wait for its confirmation later."""
        if not msg.reply:
            return Confirmation(self._pending)
        if self._sub is None:
            await self._open()
        loop = asyncio.get_running_loop()
        now = loop.time()
        token = str(next(self._tokens))
        waiting = _Unconfirmed(msg.reply, loop.create_future(), now, now + within)
        self._pending[token] = waiting
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep())
        try:
            await self._send(token, waiting)
        except BaseException:
            self._pending.pop(token, None)
            raise
        return Confirmation(self._pending, token, waiting.answered)

    async def close(self) -> None:
        await cancel_and_wait(self._sweeper)
        for waiting in self._pending.values():
            if not waiting.answered.done():
                waiting.answered.set_result(False)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _open(self) -> None:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._sub is None:
                self._prefix = self._nc.new_inbox()
                self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def _send(self, token: str, waiting: _Unconfirmed) -> None:
        try:
            await self._nc.publish(waiting.subject, b"+ACK", reply=f"{self._prefix}.{token}")
        except ConnectionClosedError:
            if not waiting.answered.done():
                waiting.answered.set_result(False)
        except Exception:  # disconnected: the sweeper sends it again
            pass

    async def _on_reply(self, msg: Msg) -> None:
        waiting = self._pending.get(msg.subject[len(self._prefix) + 1 :])
        if waiting is None or waiting.answered.done():
            return
        headers = msg.headers
        if headers and headers.get("Status") == _NO_RESPONDERS and not msg.data:
            # No consumer leader right now (it is moving): try again shortly.
            waiting.sent = asyncio.get_running_loop().time() - self._attempt_s + 0.05
            return
        waiting.answered.set_result(True)

    async def _sweep(self) -> None:
        """Runs while acks are unconfirmed: resends late ones, gives up expired ones."""
        loop = asyncio.get_running_loop()
        while self._pending:
            await asyncio.sleep(SWEEP_S)
            now = loop.time()
            closed = self._nc.is_closed
            for token, waiting in list(self._pending.items()):
                if waiting.answered.done():
                    if now >= waiting.deadline:  # sent, and its confirmation never awaited
                        del self._pending[token]
                    continue
                if closed or now >= waiting.deadline:
                    waiting.answered.set_result(False)
                elif now - waiting.sent >= self._attempt_s:
                    waiting.sent = now
                    await self._send(token, waiting)
