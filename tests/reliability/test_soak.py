"""Soak: measure the cluster's max rate, then hold 80% of it; 0 errors, RSS growth < 10%.

Load goes over HTTP to the two ingresses on their shared port (aiohttp, one pooled
session), so every part is in the path: ingress, JetStream R3, worker pools, replies.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from broker.nats.cluster import LocalCluster
from tests.reliability.conftest import ACK_WAIT, CLUSTER_CONFIG, wait_served

MODEL = "mock-gpt"
CONCURRENCY = 64  # closed-loop callers while measuring the max rate


@pytest.fixture(scope="module")
def soak_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(
        CLUSTER_CONFIG,
        tmp_path_factory.mktemp("soak"),
        worker_models=[[MODEL], [MODEL]],
        extra_env=ACK_WAIT,
    )
    local.start()
    try:
        wait_served(local.base_url, [MODEL])
        yield local
    finally:
        local.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def broker_rss(cluster: LocalCluster) -> dict[str, int]:
    return {
        child.name: rss_kib(child.popen.pid)
        for child in [*cluster.ingresses, *cluster.workers]
        if child.popen is not None and child.alive()
    }


class Load:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url
        self.statuses: collections.Counter[str] = collections.Counter()
        self.sent = 0

    async def one(self) -> None:
        self.sent += 1
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"soak {self.sent}"}]}
        try:
            async with self.session.post(self.url, json=body) as response:
                await response.read()
                self.statuses[str(response.status)] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.statuses[type(exc).__name__] += 1

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != "200")

    async def closed_loop(self, seconds: float) -> float:
        """Requests per second CONCURRENCY callers get through: the max rate."""
        end = time.monotonic() + seconds

        async def caller() -> None:
            while time.monotonic() < end:
                await self.one()

        started = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
        return self.statuses["200"] / (time.monotonic() - started)

    async def open_loop(self, rate: float, seconds: float) -> None:
        """``rate`` requests per second on a fixed schedule, whatever the latency."""
        tasks: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) - sent
            for _ in range(due):
                task = asyncio.create_task(self.one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            sent += max(0, due)
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)


@pytest.mark.parametrize(
    ("measure_s", "soak_s"),
    [pytest.param(3, 8, id="8s"), pytest.param(10, 60, id="60s", marks=pytest.mark.reliability)],
)
async def test_soak_at_80_percent_of_max_rate(
    soak_cluster: LocalCluster, measure_s: float, soak_s: float
) -> None:
    url = f"{soak_cluster.base_url}/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        probe = Load(session, url)
        max_rate = await probe.closed_loop(measure_s)
        assert probe.errors == 0, probe.statuses
        before = broker_rss(soak_cluster)  # warm: the max-rate phase set the high-water mark
        soak = Load(session, url)
        target = 0.8 * max_rate
        started = time.monotonic()
        await soak.open_loop(target, soak_s)
        achieved = soak.sent / (time.monotonic() - started)
        after = broker_rss(soak_cluster)
    growth = {name: (after[name] - before[name]) / before[name] for name in before}
    print(
        f"\nsoak: max rate {max_rate:.0f} req/s ({CONCURRENCY} callers, {measure_s}s); "
        f"{soak_s}s at {target:.0f} req/s (achieved {achieved:.0f}): {soak.sent} requests, "
        f"statuses {dict(soak.statuses)}\n"
        "RSS KiB before -> after: "
        + ", ".join(f"{n} {before[n]} -> {after[n]} ({growth[n]:+.1%})" for n in before)
    )
    assert soak.errors == 0, soak.statuses
    assert soak.statuses["200"] == soak.sent
    assert all(g < 0.10 for g in growth.values()), growth
