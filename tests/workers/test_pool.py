"""A deployment pool's handling of one request, against a real nats-server: the worker
runs in this process (its own subject prefix and stream), requests cross the server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from broker.client import BrokerClient
from schemas.config import Config
from schemas.settings import load_config
from tests import bus
from workers.jobs import Job
from workers.pool import DeploymentPool
from workers.worker import Worker


@pytest.fixture(scope="module")
def pool_config(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Config:
    path: Path = tmp_path_factory.mktemp("pool") / "promptbus.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "nats": {
                    "url": nats_url,
                    "subject_prefix": "pooltest",
                    "stream": "POOLTEST",
                    **bus.config_section(),
                },
                "worker": {"heartbeat_s": 0.5, "presence_ttl_s": 3},
                "model_list": [
                    {
                        "model_name": "pool-mock",
                        "deployments": [{"provider": "mock", "max_concurrency": 4}],
                    }
                ],
            }
        )
    )
    return load_config(path)


@pytest.fixture(scope="module")
async def client(pool_config: Config, nats_url: str) -> AsyncIterator[BrokerClient]:
    worker = Worker(pool_config)
    await worker.start(nats_url)
    broker = await BrokerClient.connect(pool_config, nats_url)
    deadline = time.monotonic() + 10
    while not broker.directory.is_served("pool-mock") and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    yield broker
    await broker.close()
    await worker.stop(grace=2)


@pytest.mark.parametrize("stream", [False, True])
async def test_the_last_reply_is_on_the_wire_before_the_bookkeeping(
    client: BrokerClient, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """What a pool publishes sits in nats-py's buffer until its task yields; the reply
    that ends a request must not wait there for the metrics, usage and ack after it."""
    buffered: list[int] = []
    served = DeploymentPool._served

    def observing(self: DeploymentPool, job: Job) -> None:
        buffered.append(self._nc.pending_data_size)
        served(self, job)

    monkeypatch.setattr(DeploymentPool, "_served", observing)
    body = {"model": "pool-mock", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        chunks = [chunk async for chunk in client.chat_stream(body)]
        assert chunks and any(c.choices and c.choices[0].finish_reason for c in chunks)
    else:
        answer = await client.chat(body)
        assert answer.choices[0].message.content == "mock reply to: hi"
    assert buffered == [0]  # the reply had left; nothing of this request waited behind it
