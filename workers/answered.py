"""What this worker process answered lately, so that a redelivery of it is dropped.

JetStream redelivers an answered request when its ack did not survive: a single
nats-server killed with SIGKILL restarts with the consumer state it had last written,
and the acks of the last moments are gone; an ack sent while the server was down is
lost too. Without this memory the request would run again: a second provider call,
billed, and a second reply. With it, a request that comes back to the process that
answered it is acked unrun. A redelivery to another worker process still runs (that
bound is in docs/operations.md).

A restarted server may also deliver again a message this process still holds (the
consumer state it went back to had not delivered it yet): that copy is left alone, and
the ack of the copy being worked on settles both.

A message is known by ``acks.identity``: its stream, stream sequence and the time the
stream stored it. A set and a dictionary lookup per request: no NATS round trip.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Literal

Seen = Literal["answered", "working"]

WINDOW_S = 120.0  # a redelivery after a restart comes within ack_wait of it
MAX_ENTRIES = 100_000  # ~15 MB at most; at 800 req/s the whole window


class AnsweredMemory:
    def __init__(self, window_s: float = WINDOW_S, max_entries: int = MAX_ENTRIES) -> None:
        self._window_s = window_s
        self._max_entries = max_entries
        self._answered: OrderedDict[str, float] = OrderedDict()  # identity -> when answered
        self._working: set[str] = set()

    def seen(self, identity: str | None) -> Seen | None:
        """Whether this process answered (or passed on) the message already, or is
        working on another copy of it right now; None for a message new to it."""
        if identity is None:
            return None
        if identity in self._answered:
            return "answered"
        return "working" if identity in self._working else None

    def start(self, identity: str | None) -> None:
        if identity is not None:
            self._working.add(identity)

    def finish(self, identity: str | None, answered: bool) -> None:
        """The copy in hand is done: answered (acked), or left to the queue (nak)."""
        if identity is None:
            return
        self._working.discard(identity)
        if not answered:
            return
        now = time.monotonic()
        done = self._answered
        done[identity] = now
        oldest = now - self._window_s
        while done and (len(done) > self._max_entries or next(iter(done.values())) < oldest):
            done.popitem(last=False)

    def __len__(self) -> int:
        return len(self._answered)
