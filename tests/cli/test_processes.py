"""Whole processes: `promptbus up` starts and stops cleanly; a killed worker loses nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import nats
import pytest
import yaml

from broker.nats.embedded import free_port
from tests import bus
from tests.conftest import Stack
from tests.procs import PROMPTBUS, Proc, wait_http


def _pids_with(needle: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(entry.name))
    return pids


def test_up_serves_and_stops_without_orphans(tmp_path: Path) -> None:
    store = tmp_path / "store-for-up"
    port, nats_port = free_port(), free_port()
    config = tmp_path / "up.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "nats": {
                    "port": nats_port,
                    "store_dir": str(store),
                    "memory_limit_mb": 128,
                    "server_cores": 1,
                    **bus.config_section(),
                },
                "ingress": {"port": port},
                "auth": {"required": True},
                "model_list": [{"model_name": "mock-gpt", "deployments": [{"provider": "mock"}]}],
            }
        )
    )
    up = Proc([*PROMPTBUS, "up", "-c", str(config)], tmp_path / "up.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", up)
        [nats_pid] = _pids_with(str(store))
        environ = Path(f"/proc/{nats_pid}/environ").read_bytes().split(b"\0")
        expected = os.environ.get("GOMEMLIMIT", "128MiB")  # the environment's wins
        assert f"GOMEMLIMIT={expected}".encode() in environ  # nats.memory_limit_mb
        cores = os.environ.get("GOMAXPROCS", "1")
        assert f"GOMAXPROCS={cores}".encode() in environ  # nats.server_cores
        chat = {"model": "mock-gpt", "messages": [{"role": "user", "content": "up"}]}
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        assert httpx.post(url, json=chat).status_code == 401  # auth.required: keys needed
        demo = up.output().split("demo API key (tenant demo): ", 1)[1].split()[0]
        assert f"Authorization: Bearer {demo}" in up.output()  # the curl line to try has it
        response = httpx.post(url, json=chat, headers={"Authorization": f"Bearer {demo}"})
        assert response.json()["choices"][0]["message"]["content"] == "mock reply to: up"
        assert "curl -s" in up.output()  # the line to try
        key = up.output().split("/admin/dashboard#key=", 1)[1].split()[0]
        overview = httpx.get(
            f"http://127.0.0.1:{port}/admin/overview", headers={"Authorization": f"Bearer {key}"}
        )
        assert overview.status_code == 200
        assert [d["deployment"] for d in overview.json()["deployments"]] == ["mock-gpt/0"]
        up.signal(signal.SIGINT)  # Ctrl-C
        assert up.popen.wait(20) == 0
    finally:
        up.stop()
    deadline = time.monotonic() + 5
    while _pids_with(str(store)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pids_with(str(store)), "nats-server outlived `promptbus up`"


async def test_killed_worker_request_is_redelivered_once(stack: Stack, tmp_path: Path) -> None:
    """Queued with no worker, taken by a worker that is SIGKILLed mid-request, answered once
    by the next worker after ack_wait: the ack comes only after the reply."""
    config = tmp_path / "crashy.yaml"
    base = yaml.safe_load(stack.config_path.read_text())
    base["model_list"] = [
        {
            "model_name": "crashy",
            "deployments": [{"provider": "mock", "mock_latency_ms": 1500, "max_concurrency": 1}],
        }
    ]
    config.write_text(yaml.safe_dump(base))
    nc = await bus.connect(stack.nats_url)
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    request_id = uuid.uuid4().hex
    body = json.dumps(
        {"model": "crashy", "messages": [{"role": "user", "content": "survive"}]}
    ).encode()
    headers = {
        "Pb-Request-Id": request_id,
        "Nats-Msg-Id": request_id,
        "Pb-Reply-To": inbox,
        "Pb-Deadline": str(int((time.time() + 40) * 1000)),
    }
    await nc.request("pb.chat.crashy", body, headers=headers, timeout=5)  # waits in the stream
    first = Proc([*PROMPTBUS, "worker", "-c", str(config)], tmp_path / "w1.log")
    second: Proc | None = None
    try:
        deadline = time.monotonic() + 20
        while "serving" not in first.output() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # it pulled the request and is inside the 1.5 s provider call
        os.kill(first.popen.pid, signal.SIGKILL)
        first.popen.wait(5)
        with pytest.raises(nats.errors.TimeoutError):
            await sub.next_msg(timeout=0.1)  # the dead worker never replied
        second = Proc([*PROMPTBUS, "worker", "-c", str(config)], tmp_path / "w2.log")
        reply = await sub.next_msg(timeout=20)  # redelivered after ack_wait (5 s)
        assert reply.headers is not None and reply.headers["Pb-Status"] == "200"
        assert (
            json.loads(reply.data)["choices"][0]["message"]["content"] == "mock reply to: survive"
        )
        with pytest.raises(nats.errors.TimeoutError):
            await sub.next_msg(timeout=1.0)  # exactly once
    finally:
        first.stop()
        if second:
            second.stop()
        await nc.drain()


def test_testcontainers_nats_when_docker_answers() -> None:
    from tests.conftest import docker_engine_available

    if not docker_engine_available():
        pytest.skip("no Docker engine on this machine: testcontainers' NATS module not used")
    from testcontainers.community.nats import NatsContainer

    async def roundtrip(url: str) -> bytes:
        nc = await bus.connect(url)
        sub = await nc.subscribe("t")
        await nc.publish("t", b"hello")
        msg = await sub.next_msg(timeout=5)
        await nc.drain()
        return msg.data  # type: ignore[no-any-return]

    with NatsContainer(jetstream=True) as container:
        assert asyncio.run(roundtrip(container.nats_uri())) == b"hello"


def test_nats_server_restart_is_survived(tmp_path: Path) -> None:
    """Worker and ingress reconnect to a restarted nats-server (same store) and serve again
    within seconds: pull credit is re-armed on reconnect, presence and stream are on disk."""
    from broker.nats.embedded import EmbeddedNats

    port = free_port()
    store = tmp_path / "nats"
    server = EmbeddedNats(
        store, port=port, credentials_dir=bus.CREDENTIALS.directory, brokers=bus.BROKERS
    ).start()
    ingress_port = free_port()
    config = tmp_path / "restart.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "nats": {"url": server.url, **bus.config_section()},
                "worker": {"heartbeat_s": 0.5, "presence_ttl_s": 3},
                "model_list": [{"model_name": "mock-gpt", "deployments": [{"provider": "mock"}]}],
            }
        )
    )
    worker = Proc([*PROMPTBUS, "worker", "-c", str(config)], tmp_path / "worker.log")
    ingress = Proc(
        [*PROMPTBUS, "ingress", "-c", str(config), "--port", str(ingress_port)],
        tmp_path / "ingress.log",
    )
    url = f"http://127.0.0.1:{ingress_port}/v1/chat/completions"
    request = {"model": "mock-gpt", "messages": [{"role": "user", "content": "again"}]}

    def answer() -> httpx.Response:
        return httpx.post(url, json=request, headers={"x-promptbus-timeout": "5"}, timeout=10)

    try:
        wait_http(f"http://127.0.0.1:{ingress_port}/readyz", ingress)
        deadline = time.monotonic() + 20
        while answer().status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert answer().status_code == 200
        server.stop()
        server = EmbeddedNats(
            store, port=port, credentials_dir=bus.CREDENTIALS.directory, brokers=bus.BROKERS
        ).start()
        restarted = time.monotonic()
        deadline = restarted + 30
        response = answer()
        while response.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
            response = answer()
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "mock reply to: again"
        assert time.monotonic() - restarted < 10  # reconnect wait and re-armed credit
        assert worker.alive() and ingress.alive()
    finally:
        ingress.stop()
        worker.stop()
        server.stop()
