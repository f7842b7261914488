"""Priority lanes and provider rate ceilings, against a real nats-server and a worker.

The worker runs in this process (its own subject prefix and stream, so the session stack
is not disturbed); requests cross the real NATS server both ways.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
import yaml

from broker.client import BrokerClient
from broker.nats.subjects import Subjects
from broker.observability import metrics
from schemas.config import Config
from schemas.envelope import H_KIND, H_REQUEST_ID, RequestMeta
from schemas.settings import load_config
from tests import bus
from workers.lanes import Lane, PrioritySlots
from workers.worker import Worker

LATENCY_S = 0.3


@pytest.fixture(scope="module")
def lane_config(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Config:
    path: Path = tmp_path_factory.mktemp("lanes") / "promptbus.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "nats": {
                    "url": nats_url,
                    "subject_prefix": "lanes",
                    "stream": "LANES",
                    **bus.config_section(),
                },
                "worker": {"heartbeat_s": 0.5, "presence_ttl_s": 3},
                "model_list": [
                    {
                        "model_name": "lane-mock",
                        "deployments": [
                            {
                                "provider": "mock",
                                "mock_latency_ms": LATENCY_S * 1000,
                                "max_concurrency": 2,
                            }
                        ],
                    },
                    {
                        "model_name": "paced-mock",
                        "deployments": [{"provider": "mock", "rpm": 600, "max_concurrency": 50}],
                    },
                    {
                        "model_name": "tpm-mock",
                        "deployments": [{"provider": "mock", "tpm": 6000, "max_concurrency": 50}],
                    },
                ],
            }
        )
    )
    return load_config(path)


@pytest.fixture(scope="module")
async def worker(lane_config: Config, nats_url: str) -> AsyncIterator[Worker]:
    running = Worker(lane_config)
    await running.start(nats_url)
    yield running
    await running.stop(grace=2)


@pytest.fixture
async def client(lane_config: Config, nats_url: str, worker: Worker) -> AsyncIterator[BrokerClient]:
    broker = await BrokerClient.connect(lane_config, nats_url)
    deadline = time.monotonic() + 10
    while not broker.directory.is_served("lane-mock") and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    yield broker
    await broker.close()


def _chat(model: str, text: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


async def test_interactive_overtakes_a_saturated_batch_lane(
    lane_config: Config, nats_url: str, client: BrokerClient
) -> None:
    subjects = Subjects("lanes", "LANES")
    nc = await bus.connect(nats_url)
    done: list[tuple[str, float]] = []
    all_done = asyncio.Event()
    inbox = f"_INBOX.lanes.{uuid.uuid4().hex}"

    async def on_reply(msg: nats.aio.msg.Msg) -> None:
        assert msg.headers and msg.headers[H_KIND] == "response", msg.headers
        done.append((msg.headers[H_REQUEST_ID], time.monotonic()))
        if len(done) == batch:
            all_done.set()

    await nc.subscribe(f"{inbox}.>", cb=on_reply)
    js = nc.jetstream()
    batch = 10  # five rounds of the pool's two slots
    for i in range(batch):
        meta = RequestMeta(request_id=f"batch-{i}-{uuid.uuid4().hex[:6]}", reply_to=f"{inbox}.{i}")
        body = msgspec.json.encode(_chat("lane-mock", f"bulk {i}"))
        await js.publish(subjects.bulk("lane-mock"), body, headers=meta.to_headers())
    await asyncio.sleep(LATENCY_S / 2)  # both slots now run batch work, eight wait queued
    started = time.monotonic()
    answer = await client.chat(_chat("lane-mock", "urgent"))
    waited = time.monotonic() - started
    await asyncio.wait_for(all_done.wait(), 10)  # the batch lane still finishes its work
    by_lane = {
        lane: metrics.WORKER_REQUESTS.labels("lane-mock", "lane-mock/0", "200", lane)._value.get()
        for lane in ("interactive", "batch")
    }
    assert by_lane["batch"] >= batch and by_lane["interactive"] >= 1, by_lane
    assert answer.choices[0].message.content == "mock reply to: urgent"
    # It waited for one of the running batch requests to finish, then ran: < 2 latencies,
    # where a single FIFO queue would have put it behind all ten (5 latencies).
    assert waited < 2 * LATENCY_S + 0.15, waited
    # Only the two batch requests running when it arrived finished well before it did:
    # nothing queued in the batch lane went ahead of it.
    ahead = [t for _, t in done if started <= t < started + waited - LATENCY_S / 2]
    assert len(ahead) <= 2, ahead
    await nc.close()


async def test_batch_lane_fills_idle_capacity(nats_url: str, client: BrokerClient) -> None:
    """With no interactive traffic, batch work uses every slot (2 at a time)."""
    subjects = Subjects("lanes", "LANES")
    nc = await bus.connect(nats_url)
    replies: asyncio.Queue[float] = asyncio.Queue()
    inbox = f"_INBOX.fill.{uuid.uuid4().hex}"

    async def on_reply(msg: nats.aio.msg.Msg) -> None:
        replies.put_nowait(time.monotonic())

    await nc.subscribe(f"{inbox}.>", cb=on_reply)
    js = nc.jetstream()
    started = time.monotonic()
    for i in range(4):
        meta = RequestMeta(request_id=f"fill-{i}-{uuid.uuid4().hex[:6]}", reply_to=f"{inbox}.{i}")
        await js.publish(
            subjects.bulk("lane-mock"),
            msgspec.json.encode(_chat("lane-mock", "x")),
            headers=meta.to_headers(),
        )
    times = [await asyncio.wait_for(replies.get(), 5) for _ in range(4)]
    # two rounds of two in parallel: ~2 latencies, not 4
    assert max(times) - started < 3 * LATENCY_S, [t - started for t in times]
    await nc.close()


async def test_rpm_ceiling_paces_requests_instead_of_failing(client: BrokerClient) -> None:
    """rpm 600 = 10/s with one second's burst: 25 concurrent requests all succeed, the
    last ones 1.5 s later (10 at once, then 15 at 10/s)."""
    started = time.monotonic()
    answers = await asyncio.gather(*(client.chat(_chat("paced-mock", f"p{i}")) for i in range(25)))
    elapsed = time.monotonic() - started
    assert all(
        a.choices[0].message.content == f"mock reply to: p{i}" for i, a in enumerate(answers)
    )
    assert elapsed >= 1.2, elapsed
    assert elapsed < 4, elapsed


async def test_tpm_ceiling_holds_requests_once_the_minute_is_spent(client: BrokerClient) -> None:
    """tpm 6000 = 100 tokens/s: requests of ~100 tokens go about one a second."""
    text = "word " * 90
    started = time.monotonic()
    await asyncio.gather(*(client.chat(_chat("tpm-mock", text)) for i in range(4)))
    elapsed = time.monotonic() - started
    assert elapsed >= 1.5, elapsed


async def test_priority_slots_serve_interactive_waiters_first() -> None:
    slots = PrioritySlots(1)
    order: list[str] = []

    async def run(lane: Lane, name: str) -> None:
        async with slots.slot(lane):
            order.append(name)
            await asyncio.sleep(0.01)

    async with slots.slot(Lane.BATCH):
        tasks = [asyncio.create_task(run(Lane.BATCH, f"b{i}")) for i in range(3)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(run(Lane.INTERACTIVE, "i0")))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["i0", "b0", "b1", "b2"]
    assert slots.busy == 0 and slots.busy_by_lane == {Lane.INTERACTIVE: 0, Lane.BATCH: 0}


async def test_cancelled_waiter_gives_its_slot_back() -> None:
    slots = PrioritySlots(1)
    async with slots.slot(Lane.BATCH):
        waiter = asyncio.create_task(slots.slot(Lane.INTERACTIVE).__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    async with slots.slot(Lane.BATCH):
        assert slots.busy == 1
    assert slots.busy == 0
