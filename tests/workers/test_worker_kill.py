"""A worker killed at full load gives its slots back within ``worker.ack_wait_s``.

The slots of a model are its consumer's ``max_ack_pending``, shared by every worker
process. Requests a dead worker held stay un-acked until ``ack_wait`` passes, and until
then the model runs on what is left: with the old 30 s default a kill at 64-slot load
ran the model at a trickle for 24 s. In-progress acks keep long calls alive, so
``ack_wait`` can be short (5 s by default).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from broker.client import BrokerClient
from broker.nats.embedded import EmbeddedNats
from schemas.settings import load_config
from tests import bus
from tests.procs import PROMPTBUS, Proc

ACK_WAIT_S = 3.0
LATENCY_S = 0.25
SLOTS = 24  # the deployment's max_concurrency: the consumer's cap for both workers


@pytest.fixture(scope="module")
def kill_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, Path]]:
    work = tmp_path_factory.mktemp("kill")
    with EmbeddedNats(
        work / "nats",
        log_file=work / "nats.log",
        credentials_dir=bus.CREDENTIALS.directory,
        brokers=bus.BROKERS,
    ) as server:
        config = {
            "nats": {"url": server.url, **bus.config_section()},
            "worker": {"ack_wait_s": ACK_WAIT_S, "heartbeat_s": 0.5, "presence_ttl_s": 3},
            "model_list": [
                {
                    "model_name": "mock-load",
                    "deployments": [
                        {
                            "provider": "mock",
                            "mock_latency_ms": LATENCY_S * 1000,
                            "max_concurrency": SLOTS,
                        }
                    ],
                }
            ],
        }
        path = work / "promptbus.yaml"
        path.write_text(yaml.safe_dump(config))
        yield work, server.url, path


async def test_capacity_recovers_within_ack_wait_after_a_kill(
    kill_env: tuple[Path, str, Path],
) -> None:
    work, url, path = kill_env
    workers = [
        Proc([*PROMPTBUS, "worker", "-c", str(path)], work / f"worker-{i}.log") for i in (0, 1)
    ]
    client = await BrokerClient.connect(load_config(path), url)
    try:
        body = {"model": "mock-load", "messages": [{"role": "user", "content": "load"}]}
        deadline = time.monotonic() + 30
        while not client.directory.is_served("mock-load"):
            assert time.monotonic() < deadline, workers[0].output()
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # both workers pulling
        done: list[float] = []  # completion times
        failures: list[BaseException] = []
        stop_at = time.monotonic() + 4.0 + ACK_WAIT_S + 4.0

        async def loop() -> None:
            while time.monotonic() < stop_at:
                try:
                    await client.chat(body, timeout=30)
                    done.append(time.monotonic())
                except Exception as exc:
                    failures.append(exc)

        loops = [asyncio.create_task(loop()) for _ in range(SLOTS * 2)]
        await asyncio.sleep(4.0)
        killed_at = time.monotonic()
        workers[0].signal(signal.SIGKILL)
        await asyncio.gather(*loops)
        assert failures == []  # the dead worker's requests were answered by the other

        def rate(start: float, end: float) -> float:
            return sum(start <= t < end for t in done) / (end - start)

        full = rate(killed_at - 3.0, killed_at)  # both workers, all slots
        assert full > 0.6 * SLOTS / LATENCY_S, full
        # From ack_wait (+1 s to refill the pipeline) after the kill, the survivor alone
        # runs the model at full capacity again: every slot is back.
        recovered_from = killed_at + ACK_WAIT_S + 1.0
        after = rate(recovered_from, stop_at - 0.5)
        print(f"rate before the kill {full:.0f}/s, from ack_wait+1s after it {after:.0f}/s")
        assert after > 0.8 * full, (full, after)
    finally:
        await client.close()
        for worker in workers:
            worker.stop()
