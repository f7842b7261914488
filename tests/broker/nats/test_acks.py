"""broker/nats/acks.py: confirmed acks, on a real nats-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from broker.nats.acks import AckConfirmer
from tests import bus


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    conn = await bus.connect(nats_url)
    yield conn
    await conn.drain()


async def _delivered(nc: Client, count: int) -> tuple[str, list[Msg]]:
    """``count`` messages pulled from a fresh stream, unacked."""
    name = f"ACKS_{uuid.uuid4().hex[:8]}"
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    for i in range(count):
        await js.publish(f"{name}.in", str(i).encode())
    sub = await js.pull_subscribe(
        f"{name}.in", "work", config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30)
    )
    return name, await sub.fetch(count, timeout=5)


async def test_acks_are_confirmed_and_settle_the_messages(nc: Client) -> None:
    stream, msgs = await _delivered(nc, 50)
    acker = AckConfirmer(nc)
    try:
        confirmed = await asyncio.gather(*(acker.ack(msg, within=5) for msg in msgs))
        assert confirmed == [True] * 50
        assert acker.pending == 0
        info = await nc.jetstream().consumer_info(stream, "work")
        assert info.num_ack_pending == 0 and info.ack_floor.stream_seq == 50
    finally:
        await acker.close()


async def test_an_unanswered_ack_is_sent_again_until_confirmed(nc: Client) -> None:
    """The first ack is lost (a leader moving): the sweeper repeats it."""
    subject = nc.new_inbox()
    seen: list[str] = []

    async def flaky_leader(msg: Msg) -> None:
        seen.append(msg.data.decode())
        if len(seen) >= 2:
            await msg.respond(b"")

    sub = await nc.subscribe(subject, cb=flaky_leader)
    acker = AckConfirmer(nc, attempt_s=0.2)
    try:
        assert await acker.ack(Msg(nc, subject="x", reply=subject), within=5)
        assert seen == ["+ACK", "+ACK"]
    finally:
        await sub.unsubscribe()
        await acker.close()


async def test_an_ack_nobody_confirms_gives_up_at_its_deadline(nc: Client) -> None:
    acker = AckConfirmer(nc, attempt_s=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        # No responders on this subject: the server answers 503 each time.
        assert not await acker.ack(Msg(nc, subject="x", reply=nc.new_inbox()), within=0.6)
        assert 0.5 <= loop.time() - started < 3
        assert acker.pending == 0
    finally:
        await acker.close()


async def test_a_message_without_an_ack_subject_is_not_confirmed(nc: Client) -> None:
    acker = AckConfirmer(nc)
    assert not await acker.ack(Msg(nc, subject="x", reply=""), within=1)
    await acker.close()


async def test_closing_releases_acks_still_waiting(nc: Client) -> None:
    subject = nc.new_inbox()
    sub = await nc.subscribe(subject)  # receives, never answers
    acker = AckConfirmer(nc)
    waiting = asyncio.create_task(acker.ack(Msg(nc, subject="x", reply=subject), within=30))
    await asyncio.sleep(0.2)
    await acker.close()
    assert await asyncio.wait_for(waiting, 2) is False
    await sub.unsubscribe()
