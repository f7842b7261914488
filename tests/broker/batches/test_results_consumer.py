"""The batcher's results consumer watchdog (broker/batches/batcher.py): an idle consumer
that is gone, or holds results it does not deliver, is given up so it can be made anew."""

from __future__ import annotations

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from broker.batches.batcher import ConsumerStalled, check_results_consumer
from tests import bus


async def test_pending_twice_is_stalled_and_a_deleted_consumer_is_gone(nats_url: str) -> None:
    nc = await bus.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="watchdog-t", subjects=["watchdog-t.>"]))
        sub = await js.pull_subscribe(
            "watchdog-t.r",
            stream="watchdog-t",
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
        )
        assert await check_results_consumer(sub, 0) == 0  # idle and nothing waiting
        for n in range(3):
            await js.publish("watchdog-t.r", str(n).encode())
        assert await check_results_consumer(sub, 0) == 1  # may be a result just arriving
        with pytest.raises(ConsumerStalled):
            await check_results_consumer(sub, 1)  # still waiting one check later: stuck
        assert len(await sub.fetch(10, timeout=2)) == 3
        assert await check_results_consumer(sub, 1) == 0
        await js.delete_consumer("watchdog-t", (await sub.consumer_info()).name)
        with pytest.raises(Exception):  # noqa: B017 - whichever error nats-py raises
            await check_results_consumer(sub, 0)
    finally:
        await nc.close()
