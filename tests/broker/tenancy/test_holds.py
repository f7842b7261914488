"""Budget holds on real JetStream counters, shared by two "processes"."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig

from broker.tenancy.holds import Holds, Pool
from tests import bus


@pytest.fixture
async def shared(nats_url: str) -> AsyncIterator[tuple[NATS, str, Holds, Holds]]:
    nc = await bus.connect(nats_url)
    name = f"HOLDS_{uuid.uuid4().hex[:8]}"
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=name,
            subjects=[f"{name}.>"],
            allow_msg_counter=True,
            allow_direct=True,
            max_msgs_per_subject=1,
        )
    )
    yield nc, name, Holds(nc, js, name), Holds(nc, js, name)
    await js.delete_stream(name)
    await nc.close()


async def _counter(nc: NATS, stream: str, subject: str) -> int:
    msg = await nc.jetstream().get_last_msg(stream, subject, direct=True)
    return int(msg.data.decode().split('"val":"')[1].split('"')[0])


async def test_concurrent_reservations_never_pass_the_limit(
    shared: tuple[NATS, str, Holds, Holds],
) -> None:
    """200 requests at once from two processes, against a pool that fits 10 of them:
    exactly 10 are admitted, and once their holds are released (as a worker does after
    recording the cost) the pool is free again."""
    nc, stream, one, two = shared
    pool = Pool(f"{stream}.spent", f"{stream}.held", limit=1000, unit="cost")
    results = await asyncio.gather(
        *((one if i % 2 else two).reserve(pool, 100) for i in range(200))
    )
    assert sum(r.allowed for r in results) == 10
    assert one.leased(pool) == two.leased(pool) == 0  # near the limit: no lease
    refused = next(r for r in results if not r.allowed)
    assert refused.spent == 0 and refused.held >= 1000  # (+ refusals not yet given back)
    await one.release({pool.held: -1000})  # the ten were answered
    await nc.flush()
    assert (await one.reserve(pool, 100)).allowed


async def test_a_busy_pool_is_reserved_from_a_lease(
    shared: tuple[NATS, str, Holds, Holds],
) -> None:
    """Far from its limit, one increment reserves for many requests: the lease doubles
    while it is used up quickly, and what is unused goes back."""
    nc, stream, one, _ = shared
    pool = Pool(f"{stream}.spent2", f"{stream}.held2", limit=10**12, unit="cost")
    adds = 0
    add = one._add

    async def counted(subject: str, amount: int) -> int:
        nonlocal adds
        adds += 1
        return await add(subject, amount)

    one._add = counted  # type: ignore[method-assign]
    for _ in range(1000):
        assert (await one.reserve(pool, 10)).allowed
    assert adds <= 11  # log2(1000) renewals
    leased = one.leased(pool)
    assert await _counter(nc, stream, pool.held) == 1000 * 10 + leased
    await one.flush(everything=True)
    assert await _counter(nc, stream, pool.held) == 1000 * 10  # what the requests hold


async def test_a_leased_reservation_is_all_or_nothing(
    shared: tuple[NATS, str, Holds, Holds],
) -> None:
    """The synchronous path admission tries first: every pool from its lease, or none
    touched (so the shared path then decides everything)."""
    _, stream, one, _ = shared
    roomy = Pool(f"{stream}.s1", f"{stream}.h1", limit=1_000_000, unit="cost")
    other = Pool(f"{stream}.s2", f"{stream}.h2", limit=1_000_000, unit="cost")
    assert not one.reserve_leased([(roomy, 10)])  # no lease yet
    for _ in range(20):  # renewed quickly: the lease grows past one request
        assert (await one.reserve(roomy, 10)).allowed
        if one.leased(roomy) >= 10:
            break
    leased = one.leased(roomy)
    assert leased >= 10
    assert not one.reserve_leased([(roomy, 10), (other, 10)])  # `other` has no lease
    assert one.leased(roomy) == leased  # ... so nothing was taken from `roomy`
    assert one.reserve_leased([(roomy, 10)])
    assert one.leased(roomy) == leased - 10
    assert not one.reserve_leased([(roomy, leased)])  # more than is left
    assert one.leased(roomy) == leased - 10


async def test_a_pool_is_roomy_while_half_its_limit_was_free_at_the_last_renewal(
    shared: tuple[NATS, str, Holds, Holds],
) -> None:
    """What decides whether a worker may settle a request with the next usage batch:
    unknown pools and pools past half their limit are not roomy; a pool with plenty
    left is, and stops being so once another process takes most of it."""
    _, stream, one, two = shared
    pool = Pool(f"{stream}.spent", f"{stream}.held", limit=10_000, unit="cost")
    assert not one.roomy(pool)  # never renewed here: nothing is known
    assert (await one.reserve(pool, 100)).allowed
    assert one.roomy(pool)
    assert (await two.reserve(pool, 6_000)).allowed  # the other process takes most
    await one.flush(everything=True)  # one's lease goes back; its next take renews
    assert (await one.reserve(pool, 100)).allowed
    assert not one.roomy(pool)
    tight = Pool(f"{stream}.spent2", f"{stream}.held2", limit=1_000, unit="cost")
    assert (await one.reserve(tight, 600)).allowed  # one request takes most of it
    assert not one.roomy(tight)


async def _admit(holds: Holds, pool: Pool, amount: int) -> tuple[bool, bool]:
    """As admission does: from the lease if it can, else the renewal. (admitted, missed)"""
    if holds.reserve_leased([(pool, amount)]):
        return True, False
    return (await holds.reserve(pool, amount)).allowed, True


async def test_a_lease_in_use_is_topped_up_before_it_runs_out(
    shared: tuple[NATS, str, Holds, Holds],
) -> None:
    """A lease spent down to half is topped up in the background while it still admits,
    so a steady stream of requests finds it empty only while it first grows."""
    nc, stream, one, _ = shared
    pool = Pool(f"{stream}.spent5", f"{stream}.held5", limit=10**12, unit="cost")
    missed = []
    for _ in range(2000):
        admitted, miss = await _admit(one, pool, 10)
        assert admitted
        missed.append(miss)
        await asyncio.sleep(0.0005)
    assert sum(missed[1000:]) == 0, sum(missed)  # none once it has grown
    await asyncio.gather(*one._topping.values())
    assert await _counter(nc, stream, pool.held) == 2000 * 10 + one.leased(pool)
    await one.flush(everything=True)
    assert await _counter(nc, stream, pool.held) == 2000 * 10


async def test_top_ups_never_hold_more_than_the_limit(
    shared: tuple[NATS, str, Holds, Holds],
) -> None:
    """Two processes admitting from topped-up leases until the pool is spent: what they
    admitted and what their leases still hold add up to the counter, never above it."""
    nc, stream, one, two = shared
    pool = Pool(f"{stream}.spent6", f"{stream}.held6", limit=200_000, unit="cost")

    async def run(holds: Holds) -> int:
        admitted = 0
        while (await _admit(holds, pool, 10))[0]:
            admitted += 1
            await asyncio.sleep(0)
        return admitted

    counts = await asyncio.gather(run(one), run(two))
    await asyncio.gather(*one._topping.values(), *two._topping.values())
    held = await _counter(nc, stream, pool.held)
    assert held <= pool.limit
    assert sum(counts) * 10 + one.leased(pool) + two.leased(pool) == held
    assert sum(counts) * 10 > pool.limit - 2 * 640 * 10  # near the limit only exact writes
