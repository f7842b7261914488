"""The worker's memory of answered requests: a redelivery is known by its stream, stream
sequence and stored time (``acks.identity``); a copy delivered while another is worked
on is seen as such; entries leave after the window or past the cap."""

from __future__ import annotations

import time

from broker.nats.acks import identity
from workers.answered import AnsweredMemory


def ack(seq: int, stored_ns: int = 1_700_000_000_000_000_000, delivered: int = 1) -> str:
    return f"$JS.ACK.PB_REQUESTS.chat_mock.{delivered}.{seq}.{seq}.{stored_ns}.0"


def answer(memory: AnsweredMemory, seq: int) -> None:
    memory.start(identity(ack(seq)))
    memory.finish(identity(ack(seq)), answered=True)


def test_a_redelivery_is_known_a_new_message_is_not() -> None:
    memory = AnsweredMemory()
    answer(memory, 7)
    assert memory.seen(identity(ack(7, delivered=2))) == "answered"
    assert memory.seen(identity(ack(8))) is None
    # A crash gave the sequence back and a new message got it: stored at another time.
    assert memory.seen(identity(ack(7, stored_ns=1_700_000_000_000_000_001))) is None
    assert identity("_INBOX.x") is None and memory.seen(None) is None
    memory.finish(None, answered=True)  # not from JetStream: nothing to remember
    assert len(memory) == 1


def test_a_copy_delivered_while_another_is_worked_on() -> None:
    """After a restart the consumer may deliver again what this process still holds."""
    memory = AnsweredMemory()
    first = identity(ack(3))
    memory.start(first)
    assert memory.seen(identity(ack(3, delivered=1))) == "working"
    memory.finish(first, answered=False)  # left to the queue (nak): may run again
    assert memory.seen(first) is None and len(memory) == 0


def test_entries_leave_after_the_window_or_when_a_table_fills() -> None:
    """Two tables of 8 slots: each takes 4 answers (half full), then the older is cleared."""
    small = AnsweredMemory(slots=8)
    for seq in range(12):
        answer(small, seq)
    assert len(small) == 8
    assert all(small.seen(identity(ack(seq))) is None for seq in range(4))
    assert all(small.seen(identity(ack(seq))) == "answered" for seq in range(4, 12))
    windowed = AnsweredMemory(window_s=0.1)
    answer(windowed, 1)
    time.sleep(0.06)
    answer(windowed, 2)  # a new half window: 1 is in the older table
    assert windowed.seen(identity(ack(1))) == "answered"
    time.sleep(0.06)
    answer(windowed, 3)  # and now it is gone
    assert windowed.seen(identity(ack(1))) is None
    assert windowed.seen(identity(ack(2))) == "answered"


def test_many_answers_are_all_known_exactly() -> None:
    memory = AnsweredMemory()
    for seq in range(50_000):
        answer(memory, seq)
    assert all(memory.seen(identity(ack(seq))) == "answered" for seq in range(50_000))
    stamp = 1_700_000_000_000_000_007
    assert not any(memory.seen(identity(ack(seq, stored_ns=stamp))) for seq in range(50_000))
