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


async def test_an_ack_sent_now_leaves_with_the_reply_before_it(nc: Client) -> None:
    """``send`` publishes at once, in order after what was published before it, and its
    confirmation is awaited later (the worker does its bookkeeping in between)."""
    order: list[str] = []
    leader, reply_to = nc.new_inbox(), nc.new_inbox()

    async def seen(msg: Msg) -> None:
        order.append(msg.data.decode())
        if msg.reply:
            await msg.respond(b"")

    subs = [await nc.subscribe(leader, cb=seen), await nc.subscribe(reply_to, cb=seen)]
    acker = AckConfirmer(nc)
    try:
        await nc.publish(reply_to, b"reply")
        confirmation = await acker.send(Msg(nc, subject="x", reply=leader), within=5)
        assert acker.pending == 1
        assert await confirmation.confirmed()
        assert order == ["reply", "+ACK"] and acker.pending == 0
    finally:
        for sub in subs:
            await sub.unsubscribe()
        await acker.close()


async def test_a_confirmation_never_awaited_is_forgotten_at_its_deadline(nc: Client) -> None:
    """A handler cancelled between sending its ack and awaiting it leaves no entry."""
    subject = nc.new_inbox()
    sub = await nc.subscribe(subject)  # receives, never answers
    acker = AckConfirmer(nc, attempt_s=0.1)
    try:
        await acker.send(Msg(nc, subject="x", reply=subject), within=0.3)
        assert acker.pending == 1
        for _ in range(40):
            if acker.pending == 0:
                break
            await asyncio.sleep(0.05)
        assert acker.pending == 0
    finally:
        await sub.unsubscribe()
        await acker.close()
