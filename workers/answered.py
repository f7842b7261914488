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
stream stored it, compared exactly (a false match would drop a request unrun). The
memory is two fixed tables allocated at start, so it costs the same RSS at any load: each
holds what was answered for half the window (or until half full), then the older is
cleared and reused. A lookup is a few probes of an array: no NATS round trip.
"""

from __future__ import annotations

import time
from array import array
from typing import Literal

Seen = Literal["answered", "working"]
Identity = tuple[str, int, int]  # stream, stream sequence, stored ns

WINDOW_S = 60.0  # a redelivery comes ack_wait after the server is back: outages < ~55 s
SLOTS = 1 << 17  # per table: 2 MiB each; half full is 65,536 answers per half window
_GOLDEN = 0x9E3779B97F4A7C15


class _Table:
    """Open addressing over two arrays: a key (stream number and sequence, 0 = empty)
    and the stored time that must match too."""

    def __init__(self, slots: int) -> None:
        self.keys = array("Q", bytes(8 * slots))
        self.stamps = array("Q", bytes(8 * slots))
        self.used = 0
        self._mask = slots - 1
        self._shift = 64 - (slots.bit_length() - 1)

    def _slot(self, key: int, stamp: int) -> int:
        return (((key ^ stamp) * _GOLDEN) & 0xFFFF_FFFF_FFFF_FFFF) >> self._shift

    def has(self, key: int, stamp: int) -> bool:
        keys, i = self.keys, self._slot(key, stamp)
        while keys[i]:
            if keys[i] == key and self.stamps[i] == stamp:
                return True
            i = (i + 1) & self._mask
        return False

    def add(self, key: int, stamp: int) -> None:
        keys, i = self.keys, self._slot(key, stamp)
        while keys[i]:
            if keys[i] == key and self.stamps[i] == stamp:
                return
            i = (i + 1) & self._mask
        keys[i], self.stamps[i] = key, stamp
        self.used += 1

    def clear(self) -> None:
        if self.used:
            n = len(self.keys)
            self.keys[:] = array("Q", bytes(8 * n))
            self.stamps[:] = array("Q", bytes(8 * n))
            self.used = 0


class AnsweredMemory:
    def __init__(self, window_s: float = WINDOW_S, slots: int = SLOTS) -> None:
        assert slots & (slots - 1) == 0, "slots: a power of two"
        self._current, self._previous = _Table(slots), _Table(slots)
        self._half_s = window_s / 2
        self._limit = slots // 2  # rotate before a table is more than half full
        self._rotated = time.monotonic()
        self._streams: dict[str, int] = {}
        self._working: set[Identity] = set()

    def _key(self, identity: Identity) -> tuple[int, int]:
        stream, seq, stored = identity
        number = self._streams.setdefault(stream, len(self._streams) + 1)
        return (number << 48) | (seq & 0xFFFF_FFFF_FFFF), stored & 0xFFFF_FFFF_FFFF_FFFF

    def seen(self, identity: Identity | None) -> Seen | None:
        """Whether this process answered (or passed on) the message already, or is
        working on another copy of it right now; None for a message new to it."""
        if identity is None:
            return None
        key, stamp = self._key(identity)
        if self._current.has(key, stamp) or self._previous.has(key, stamp):
            return "answered"
        return "working" if identity in self._working else None

    def start(self, identity: Identity | None) -> None:
        if identity is not None:
            self._working.add(identity)

    def finish(self, identity: Identity | None, answered: bool) -> None:
        """The copy in hand is done: answered (acked), or left to the queue (nak)."""
        if identity is None:
            return
        self._working.discard(identity)
        if not answered:
            return
        now = time.monotonic()
        if now - self._rotated >= self._half_s or self._current.used >= self._limit:
            self._previous.clear()
            self._current, self._previous = self._previous, self._current
            self._rotated = now
        self._current.add(*self._key(identity))

    def __len__(self) -> int:
        return self._current.used + self._previous.used
