"""Pull credit in requests when a message weighs several (a block of batch lines): asked
for in messages of the expected weight, never more than the capacity left, rounded up."""

from __future__ import annotations

from typing import cast

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker.nats.pull import PullConsumer


async def _noop(msg: Msg) -> None:
    return None


def _consumer(capacity: int, unit: int, gate: int | None = None) -> PullConsumer:
    return PullConsumer(
        cast(NATS, None),
        "S",
        "C",
        capacity,
        _noop,
        gate=(lambda: gate) if gate is not None else None,
        weigh=lambda msg: 8,
        unit=unit,
    )


def test_credit_is_asked_in_messages_of_the_expected_weight() -> None:
    pull = _consumer(64, 8)
    assert pull._wanted() == 8  # 64 requests: eight blocks of eight
    pull._outstanding = 8
    assert pull._wanted() == 0
    pull._outstanding, pull._inflight = 0, 60  # four requests free: one block, rounded up
    assert pull._wanted() == 1
    pull._inflight = 64
    assert pull._wanted() == 0


def test_the_gate_counts_requests_too() -> None:
    pull = _consumer(64, 8, gate=20)  # 20 idle slots: three blocks (24 lines at most)
    assert pull._wanted() == 3


def test_a_unit_of_one_is_the_message_count() -> None:
    pull = PullConsumer(cast(NATS, None), "S", "C", 10, _noop)
    assert pull._wanted() == 10
    pull._inflight = 9
    assert pull._wanted() == 1
