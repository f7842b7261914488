"""Poison requests: one that crashes or stalls every worker that takes it must end.

JetStream redelivers an un-acked request after ``ack_wait`` without limit (a bounded
``max_deliver`` would also count the deliberate hand-backs, and past it JetStream stops
delivering silently: the caller would never be answered). Instead workers count *starts*:
the first delivery costs nothing; each redelivered request that reaches the provider
call increments ``<stream>.<seq>`` in the attempts bucket. Past ``worker.max_deliver``
starts the request is not run again: its caller gets 500 ``poison_request``, a copy goes
to the dead-letter subject ``<prefix>.dead.<model>``, and it is acked.
"""

from __future__ import annotations

import contextlib
import logging

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from broker.nats import acks
from broker.nats.subjects import Subjects
from broker.observability import metrics
from workers.blocks import LineMsg

log = logging.getLogger(__name__)

H_DEAD_REASON = "Pb-Dead-Reason"


class PoisonGuard:
    def __init__(self, nc: NATS, attempts: KeyValue, subjects: Subjects, max_deliver: int) -> None:
        self._nc = nc
        self._attempts = attempts
        self._subjects = subjects
        self.max_deliver = max_deliver

    async def starts(self, msg: Msg) -> int:
        """This start's number: 1 for a first delivery (no round trip), else counted in
        the attempts bucket. A delivery that was handed back before it started (nak)
        makes the count at most one too high. Unreadable state counts as a first start:
        the guard never stops a request from being served."""
        if acks.delivery_count(msg.reply) <= 1:
            return 1
        place = msg.key if isinstance(msg, LineMsg) else acks.stream_sequence(msg.reply)
        key = f"{acks.stream_name(msg.reply)}.{place}"
        try:
            try:
                entry = await self._attempts.get(key)
                started = int(entry.value or b"1") + 1
                await self._attempts.update(key, str(started).encode(), last=entry.revision)
            except KeyNotFoundError:
                started = 2  # the first start was never written down
                await self._attempts.create(key, b"2")
        except Exception as exc:  # a conflict or an election: serve it, count it next time
            log.warning("attempts of %s not counted: %s", key, exc)
            return 1
        return started

    async def bury(self, msg: Msg, model: str, starts: int) -> None:
        """Keep the request for an operator, as it was queued, with why it was given up."""
        metrics.POISON.labels(model).inc()
        headers = dict(msg.headers or {})
        headers.pop("Nats-Msg-Id", None)
        headers[H_DEAD_REASON] = f"started {starts - 1} times without an answer"
        log.warning("request %s on %s is poison: moved to dead letters", msg.subject, model)
        with contextlib.suppress(Exception):
            await self._nc.jetstream().publish(
                self._subjects.dead(model),
                msg.data,
                headers=headers,
                stream=self._subjects.dead_stream,
            )
