"""Bulk batches (issue 5) on the R3 cluster: kill a worker or the stream leader mid-batch;
every line ends in the output file exactly once. The single-server restart mid-batch is
in tests/broker/batches/test_batches.py (1,000 lines); its 10,000-line run is here."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from broker.nats.cluster import LocalCluster
from tests.reliability.conftest import (
    ACK_WAIT,
    CLUSTER_CONFIG,
    cluster_config,
    short_and_long,
    wait_replicas_current,
    wait_served,
)

MODEL = "mock-slow"  # 64 slots x 100 ms: ~640 lines/s, a batch lasts
UNAVAILABLE: collections.Counter[str] = collections.Counter()  # batch polls refused


@pytest.fixture(scope="module")
def batch_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(
        CLUSTER_CONFIG,
        tmp_path_factory.mktemp("batch-cluster"),
        worker_models=[[MODEL], [MODEL]],
        extra_env=ACK_WAIT,
    )
    local.start()
    try:
        wait_served(local.base_url, [MODEL])
        yield local
    finally:
        local.stop()


def submit(http: httpx.Client, ids: list[str]) -> str:
    lines = (
        {
            "custom_id": i,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": i}]},
        }
        for i in ids
    )
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    upload = http.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})
    assert upload.status_code == 200, upload.text
    created = http.post(
        "/v1/batches",
        json={
            "input_file_id": upload.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    )
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def wait_batch(http: httpx.Client, batch_id: str, done: int, timeout: float) -> Any:
    """Until ``done`` lines completed or the batch ended."""
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(f"/v1/batches/{batch_id}")
        if response.status_code != 200:  # 503 while the batches bucket elects a leader
            UNAVAILABLE[f"{response.status_code} {response.json()['error']['code']}"] += 1
            if time.monotonic() > deadline:
                raise TimeoutError(response.text)
            time.sleep(0.2)
            continue
        batch = response.json()
        if batch["status"] in {"completed", "failed", "cancelled", "expired"}:
            return batch
        if batch["request_counts"]["completed"] >= done:
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch stuck: {batch}")
        time.sleep(0.1)


def _download(http: httpx.Client, path: str, tries: int = 5) -> str:
    """A 503 before the body starts (the stream has no leader yet) is retried, as a client
    would. A body cut off mid-way fails the test: the route reads on where it was."""
    for _ in range(tries):
        response = http.get(path)
        if response.status_code != 503:
            assert response.status_code == 200, response.text
            return response.text
        time.sleep(1.0)
    raise AssertionError(f"{path}: still 503 after {tries} tries")


def check_exactly_once(http: httpx.Client, batch: Any, ids: list[str], label: str) -> None:
    output = _download(http, f"/v1/files/{batch['output_file_id']}/content").splitlines()
    seen = [json.loads(line) for line in output]
    custom = [line["custom_id"] for line in seen]
    lost = len(set(ids) - set(custom))
    duplicated = len(custom) - len(set(custom))
    print(
        f"\n{label}: {len(ids)} lines, status {batch['status']}, counts "
        f"{batch['request_counts']}, output lines {len(custom)}, lost {lost}, "
        f"duplicated {duplicated}; status polls refused meanwhile {dict(UNAVAILABLE)}"
    )
    UNAVAILABLE.clear()
    assert batch["status"] == "completed", batch
    assert lost == 0 and duplicated == 0
    assert batch["request_counts"] == {"total": len(ids), "completed": len(ids), "failed": 0}
    for line in seen:
        assert line["response"]["status_code"] == 200, line
        content = line["response"]["body"]["choices"][0]["message"]["content"]
        assert content == f"mock reply to: {line['custom_id']}"


@short_and_long(short=1000, long=10_000)
def test_worker_kill_9_mid_batch(batch_cluster: LocalCluster, n: int) -> None:
    ids = [f"wk-{n}-{i}" for i in range(n)]
    with httpx.Client(base_url=batch_cluster.base_url, timeout=30) as http:
        batch_id = submit(http, ids)
        midway = wait_batch(http, batch_id, n // 5, 120)
        assert midway["status"] == "in_progress", "the batch ended before the crash"
        victim = next(w for w in batch_cluster.workers if w.alive())
        victim.kill()
        batch_cluster.start_worker([MODEL])
        batch = wait_batch(http, batch_id, n + 1, 300)
        check_exactly_once(http, batch, ids, "worker kill -9 mid-batch (R3 cluster)")


@short_and_long(short=1000, long=10_000)
async def test_nats_node_kill_mid_batch(batch_cluster: LocalCluster, n: int) -> None:
    from broker.client import BrokerClient

    client = await BrokerClient.connect(cluster_config(batch_cluster), batch_cluster.nats.url)
    try:
        await wait_replicas_current(client.js)
        info = await client.js.stream_info(client.subjects.stream)
        assert info.cluster is not None
        leader = next(
            i for i in range(3) if batch_cluster.nats.server_name(i) == info.cluster.leader
        )
        ids = [f"nk-{n}-{i}" for i in range(n)]
        with httpx.Client(base_url=batch_cluster.base_url, timeout=30) as http:
            batch_id = submit(http, ids)
            midway = await asyncio.to_thread(wait_batch, http, batch_id, n // 5, 120)
            assert midway["status"] == "in_progress", "the batch ended before the crash"
            batch_cluster.nats.kill_node(leader)
            batch = await asyncio.to_thread(wait_batch, http, batch_id, n + 1, 300)
            check_exactly_once(
                http, batch, ids, f"nats-server n{leader} (stream leader) kill -9 mid-batch"
            )
        await asyncio.to_thread(batch_cluster.nats.start_node, leader)
        await asyncio.to_thread(batch_cluster.nats.wait_ready)
        await wait_replicas_current(client.js)
    finally:
        await client.close()
