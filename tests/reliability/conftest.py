"""The reliability stack: ``LocalCluster`` (what ``make cluster`` runs) on a temp dir.

Sizes: each test runs a short version inside ``make test`` and the issue's full size
under ``make test-reliability`` (marker ``reliability``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from broker.client import BrokerClient
from broker.nats.cluster import LocalCluster
from schemas.settings import load_config
from tests.procs import ROOT

CLUSTER_CONFIG = ROOT / "deploy" / "cluster.yaml"
ACK_WAIT = {"PROMPTBUS__WORKER__ACK_WAIT_S": "10"}  # over a leader election (4-9 s)


def short_and_long(short: int, long: int) -> pytest.MarkDecorator:
    """Parametrize ``n``: ``short`` in make test, ``long`` under make test-reliability."""
    return pytest.mark.parametrize(
        "n",
        [
            pytest.param(short, id=f"n{short}"),
            pytest.param(long, id=f"n{long}", marks=pytest.mark.reliability),
        ],
    )


def wait_served(base: str, models: list[str], timeout: float = 30.0) -> None:
    """Until the ingress sees a worker for every model (not 503)."""
    deadline = time.monotonic() + timeout
    for model in models:
        while True:
            response = httpx.post(
                f"{base}/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "ping"}]},
                timeout=10,
            )
            if response.status_code != 503:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{model} not served: {response.text}")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """3 nats-servers (R3), mock upstream, two mock-gpt pools, one upstream-gpt pool,
    two ingresses on one port."""
    local = LocalCluster(
        CLUSTER_CONFIG,
        tmp_path_factory.mktemp("cluster"),
        worker_models=[["mock-gpt"], ["mock-gpt"], ["upstream-gpt"]],
        extra_env=ACK_WAIT,
    )
    local.start()
    try:
        wait_served(local.base_url, ["mock-gpt", "upstream-gpt"])
        yield local
    finally:
        local.stop()


def cluster_config(local: LocalCluster):  # type: ignore[no-untyped-def]
    return load_config(local.config_path, env=local.env)


@pytest.fixture
async def cluster_client(cluster: LocalCluster) -> AsyncIterator[BrokerClient]:
    client = await BrokerClient.connect(cluster_config(cluster), cluster.nats.url)
    try:
        yield client
    finally:
        await client.close()


def assert_all_answered_once(result: object, n: int) -> None:
    from tests.reliability.load import BatchResult

    assert isinstance(result, BatchResult)
    assert result.lost == 0, result.line("lost requests")
    assert result.ok == n, result.line("not all answered 200")
    assert result.duplicated == 0, result.line("duplicate replies")
    # The spy shares the caller's connection; on a reconnect nats-py re-subscribes the
    # caller's inbox and then the spy, and a reply routed between the two reaches only the
    # caller (seen once, 599 of 600). ``ok == n`` already says every caller was answered.
    missed = n - len(result.replies)
    assert 0 <= missed <= result.reconnects, result.line("reply count")


async def wait_replicas_current(js: object, timeout: float = 60.0) -> None:
    """Until every stream has a leader and all its replicas caught up: the point where a
    rolling restart may take down the next node without losing a quorum."""
    deadline = time.monotonic() + timeout
    while True:
        lagging = []
        try:
            for info in await js.streams_info():  # type: ignore[attr-defined]
                cluster = info.cluster
                peers = cluster.replicas or [] if cluster else []
                if cluster is None or not cluster.leader or not all(p.current for p in peers):
                    lagging.append(info.config.name)
                elif len(peers) != info.config.num_replicas - 1:
                    lagging.append(info.config.name)
        except Exception as exc:  # an API timeout while a leader is elected
            lagging.append(str(exc))
        if not lagging:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"replicas not current after {timeout}s: {lagging}")
        await asyncio.sleep(0.5)
