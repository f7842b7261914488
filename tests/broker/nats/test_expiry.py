"""broker/nats/expiry.py: waits end at their deadline, with one sweeper for all."""

from __future__ import annotations

import asyncio

import pytest

from broker.nats.expiry import Expiry


async def test_an_answer_before_the_deadline_is_returned() -> None:
    expiry = Expiry(tick_s=0.01)
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.02, future.set_result, "reply")
    assert await expiry.wait(future, 5) == "reply"
    assert len(expiry) == 0
    await expiry.close()


async def test_a_wait_past_its_deadline_times_out_within_a_tick() -> None:
    expiry = Expiry(tick_s=0.02)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await expiry.wait(loop.create_future(), 0.1)
    assert 0.1 <= loop.time() - started < 0.1 + 0.02 + 0.2
    assert len(expiry) == 0
    await expiry.close()


async def test_waits_end_each_at_its_own_deadline() -> None:
    expiry = Expiry(tick_s=0.01)
    loop = asyncio.get_running_loop()
    ended: list[float] = []

    async def waiting(within: float) -> None:
        with pytest.raises(TimeoutError):
            await expiry.wait(loop.create_future(), within)
        ended.append(within)

    answered: asyncio.Future[int] = loop.create_future()
    loop.call_later(0.05, answered.set_result, 1)
    await asyncio.gather(waiting(0.3), waiting(0.1), waiting(0.2), expiry.wait(answered, 0.15))
    assert ended == [0.1, 0.2, 0.3]
    await asyncio.sleep(0.05)
    assert expiry._sweeper is not None and expiry._sweeper.done()  # idle: no task runs
    await expiry.close()


async def test_a_cancelled_caller_cancels_the_future() -> None:
    expiry = Expiry(tick_s=0.01)
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(expiry.wait(future, 10))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert future.cancelled() and len(expiry) == 0
    await expiry.close()


async def test_a_block_past_its_deadline_raises_timeout_error() -> None:
    expiry = Expiry(tick_s=0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with expiry.within(0.05) as scope:
            await asyncio.sleep(10)
    assert scope.expired
    assert 0.05 <= loop.time() - started < 0.05 + 0.01 + 0.2
    assert len(expiry) == 0
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0  # nothing left pending
    await asyncio.sleep(0)  # and no stray cancellation arrives later
    await expiry.close()


async def test_a_block_within_its_deadline_is_left_alone() -> None:
    expiry = Expiry(tick_s=0.01)
    async with expiry.within(5) as scope:
        await asyncio.sleep(0.03)
    async with expiry.within(None):  # no deadline: nothing noted
        assert len(expiry) == 0
        await asyncio.sleep(0.02)
    assert not scope.expired and len(expiry) == 0
    await expiry.close()


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    expiry = Expiry(tick_s=0.01)
    entered = asyncio.Event()

    async def blocked() -> None:
        async with expiry.within(10):
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(blocked())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(expiry) == 0
    await expiry.close()


async def test_nested_blocks_time_out_at_the_inner_deadline_only() -> None:
    expiry = Expiry(tick_s=0.01)
    async with expiry.within(5) as outer:
        with pytest.raises(TimeoutError):
            async with expiry.within(0.03):
                await asyncio.sleep(10)
        await asyncio.sleep(0.02)  # the outer block goes on
    assert not outer.expired
    await expiry.close()
