"""broker/nats/subscription.py: ``next_msg`` on our connections, nats-py's behaviour
without a timer for a message already queued."""

from __future__ import annotations

import asyncio
import uuid

import nats.errors
import pytest
from nats.js.api import StreamConfig

from broker.nats.connection import GuardedNATS, connect
from broker.nats.credentials import Role
from broker.nats.subscription import QuickSubscription
from tests import bus


@pytest.fixture
async def nc(nats_url: str) -> GuardedNATS:
    client = await connect(nats_url, "subscription-test", bus.CREDENTIALS.login(Role.ADMIN))
    assert isinstance(client, GuardedNATS)
    return client


async def test_queued_messages_come_in_order_and_an_empty_queue_times_out(
    nc: GuardedNATS,
) -> None:
    try:
        subject = f"sub.{uuid.uuid4().hex}"
        sub = await nc.subscribe(subject)
        assert isinstance(sub, QuickSubscription)
        for i in range(5):
            await nc.publish(subject, str(i).encode())
        await nc.flush()
        while sub.pending_msgs < 5:  # noqa: ASYNC110 (nats-py has no event for it)
            await asyncio.sleep(0.01)
        got = [(await sub.next_msg(timeout=1)).data for _ in range(5)]
        assert got == [b"0", b"1", b"2", b"3", b"4"]
        assert sub.pending_msgs == 0 and sub.pending_bytes == 0
        with pytest.raises(nats.errors.TimeoutError):
            await sub.next_msg(timeout=0.05)
    finally:
        await nc.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await sub.next_msg(timeout=0.05)


async def test_a_callback_subscription_still_refuses_next_msg(nc: GuardedNATS) -> None:
    async def on_message(msg: object) -> None:
        pass

    try:
        sub = await nc.subscribe(f"sub.{uuid.uuid4().hex}", cb=on_message)
        with pytest.raises(nats.errors.Error, match="next_msg cannot be used"):
            await sub.next_msg(timeout=0.05)
    finally:
        await nc.close()


async def test_a_fetch_returns_every_stored_message_at_once(nc: GuardedNATS) -> None:
    """JetStream's fetch reads a batch through ``next_msg``: the batcher's result reads."""
    name = f"SUB_{uuid.uuid4().hex[:8]}"
    js = nc.jetstream()
    try:
        await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
        for i in range(300):
            await js.publish(f"{name}.x", str(i).encode())
        sub = await js.pull_subscribe(f"{name}.x", stream=name)
        msgs = await sub.fetch(1000, timeout=2)
        assert [m.data for m in msgs] == [str(i).encode() for i in range(300)]
        with pytest.raises(TimeoutError):  # nats-py raises its own or asyncio's, by path
            await sub.fetch(10, timeout=0.3)
        await js.delete_stream(name)
    finally:
        await nc.close()
