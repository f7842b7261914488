"""Restart the embedded single nats-server (R1, the ``make run`` default) mid-batch.

The queue is a file-backed JetStream stream: requests queued before the restart are
still there after it, clients and workers reconnect on their own, and a publish the
dying server swallowed is sent again under the same Nats-Msg-Id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from broker.client import BrokerClient
from broker.nats.embedded import EmbeddedNats
from schemas.settings import load_config
from tests import bus
from tests.procs import PROMPTBUS, Proc
from tests.reliability.conftest import CLUSTER_CONFIG, assert_all_answered_once, short_and_long
from tests.reliability.load import run_batch


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedNats, Path]]:
    workdir = tmp_path_factory.mktemp("single")
    server = EmbeddedNats(
        workdir / "nats",
        log_file=workdir / "nats.log",
        credentials_dir=bus.CREDENTIALS.directory,
        brokers=bus.BROKERS,
    ).start()
    config = workdir / "promptbus.yaml"
    config.write_text(
        CLUSTER_CONFIG.read_text().replace("${UPSTREAM_URL}", "http://127.0.0.1:9/v1")
    )
    env = {
        "PROMPTBUS__NATS__URL": server.url,
        "PROMPTBUS__WORKER__ACK_WAIT_S": "3",
        **bus.environment(),
    }
    worker = Proc(
        [*PROMPTBUS, "worker", "-c", str(config), "--model", "mock-gpt"],
        workdir / "worker.log",
        env,
    )
    try:
        yield server, config
    finally:
        worker.stop()
        server.stop()


@pytest.fixture
async def single_client(single: tuple[EmbeddedNats, Path]) -> AsyncIterator[BrokerClient]:
    server, config_path = single
    config = load_config(config_path, env={"PROMPTBUS__NATS__URL": server.url, **bus.environment()})
    client = await BrokerClient.connect(config, server.url)
    try:
        for _ in range(300):  # until the worker's presence is visible
            if client.directory.is_served("mock-gpt"):
                break
            await asyncio.sleep(0.1)
        yield client
    finally:
        await client.close()


@short_and_long(short=600, long=10_000)
async def test_restart_single_nats_server_mid_batch(
    single: tuple[EmbeddedNats, Path], single_client: BrokerClient, n: int
) -> None:
    server, _ = single

    async def restart() -> None:
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)

    result = await run_batch(single_client, n, "mock-gpt", disrupt=restart)
    print("\n" + result.line("embedded nats-server restart mid-batch"))
    assert_all_answered_once(result, n)


@short_and_long(short=600, long=10_000)
async def test_kill_9_single_nats_server_mid_batch(
    single: tuple[EmbeddedNats, Path], single_client: BrokerClient, n: int
) -> None:
    """SIGKILL, no clean shutdown: the store is what the server had written (the OS
    keeps it; only a power loss would not), and the same guarantees hold: nothing lost,
    nothing answered twice."""
    server, _ = single

    async def kill_and_start() -> None:
        assert server.process is not None
        server.process.kill()
        await asyncio.to_thread(server.process.wait)
        await asyncio.to_thread(server.start)

    result = await run_batch(single_client, n, "mock-gpt", disrupt=kill_and_start)
    print("\n" + result.line("embedded nats-server kill -9 mid-batch"))
    # The acks a SIGKILLed server had not yet written are lost, and the consumer state
    # it restarts with delivers those requests again: the worker that answered them
    # knows them (workers/answered.py) and does not run them twice.
    assert_all_answered_once(result, n)
