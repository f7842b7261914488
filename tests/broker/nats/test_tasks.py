"""broker/nats/tasks.py: a task that drops a cancellation still ends."""

from __future__ import annotations

import asyncio

import pytest

from broker.nats.tasks import cancel_and_wait, raise_if_cancelled


async def test_a_task_that_drops_its_cancel_is_cancelled_again() -> None:
    """The shape of the batch hang: a loop whose await swallowed the cancel goes on."""
    rounds = 0

    async def stubborn() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if rounds < 3:  # as wait_for does when a result arrives with the cancel
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    continue
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0.05)
    await asyncio.wait_for(cancel_and_wait(task, None, every=0.05), 5)
    assert task.cancelled()


async def test_exceptions_of_stopped_tasks_are_retrieved() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.done() and not task.cancelled()


async def test_raise_if_cancelled_honours_a_counted_cancel() -> None:
    reached: list[str] = []

    async def body() -> None:
        raise_if_cancelled()  # nothing pending: goes on
        reached.append("before")
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        raise_if_cancelled()  # counted, not yet delivered: raises here, not later
        reached.append("after")

    task = asyncio.create_task(body())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reached == ["before"]
