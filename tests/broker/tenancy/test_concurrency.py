"""Concurrency caps (broker/tenancy/concurrency.py) across two ingress processes.

A tenant flooding a model holds at most its ``max_inflight`` of the deployment's slots,
wherever its requests arrive; the others' requests start at once. A fake OpenAI upstream
(a real HTTP server in this process) counts what runs at once, per tenant.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from broker.nats.embedded import free_port
from tests import bus
from tests.fakes.server import ThreadedServer
from tests.procs import PROMPTBUS, Proc, wait_http

ADMIN = "concurrency-admin-secret"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
LATENCY_S = 0.5  # the upstream's answer time
SLOTS = 64  # the deployment's max_concurrency
CAP = 40  # tenant A's max_inflight


class CountingUpstream:
    """Chat completions after ``LATENCY_S``; counts requests running at once by the
    tenant named in the message ("a-17" is tenant a's) and when each arrived."""

    def __init__(self) -> None:
        self.running: collections.Counter[str] = collections.Counter()
        self.peak: collections.Counter[str] = collections.Counter()
        self.arrived: dict[str, float] = {}
        self.server = ThreadedServer(
            Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])
        )

    async def chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        tag = str(body["messages"][0]["content"])
        tenant = tag.split("-")[0]
        self.arrived[tag] = time.monotonic()
        self.running[tenant] += 1
        self.peak[tenant] = max(self.peak[tenant], self.running[tenant])
        try:
            await asyncio.sleep(LATENCY_S)
        finally:
            self.running[tenant] -= 1
        return JSONResponse(
            {
                "id": "chatcmpl-fair",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
        )


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll the upstream's counts (they change in its own thread: no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


class Stack:
    def __init__(self, ingresses: list[str], upstream: CountingUpstream) -> None:
        self.ingresses = ingresses
        self.upstream = upstream
        self._next = itertools.cycle(ingresses)

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = httpx.request(
            method, f"{self.ingresses[0]}{path}", headers=ADMIN_HEADERS, timeout=10, **kwargs
        )
        assert response.status_code < 300, response.text
        return response

    def key(self, tenant: str, **limits: int) -> str:
        spec: dict[str, Any] = {"tenant": tenant}
        if limits:
            spec["limits"] = limits
        return str(self.admin("POST", "/admin/keys", json=spec).json()["key"])

    async def chat(
        self, http: httpx.AsyncClient, key: str, tag: str, **headers: str
    ) -> httpx.Response:
        return await http.post(
            f"{next(self._next)}/v1/chat/completions",
            json={"model": "fair-gpt", "messages": [{"role": "user", "content": tag}]},
            headers={"Authorization": f"Bearer {key}", **headers},
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, nats_url: str) -> Iterator[Stack]:
    work: Path = tmp_path_factory.mktemp("concurrency")
    upstream = CountingUpstream()
    upstream.server.start()
    config = work / "promptbus.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "nats": {
                    "url": nats_url,
                    "subject_prefix": "cc",
                    "stream": "CC_REQ",
                    **bus.config_section(),
                },
                "auth": {"required": True},
                "worker": {"heartbeat_s": 0.5, "presence_ttl_s": 3},
                "model_list": [
                    {
                        "model_name": "fair-gpt",
                        "deployments": [
                            {
                                "provider": "openai",
                                "base_url": f"{upstream.server.url}/v1",
                                "api_key_env": "PB_TEST_UPSTREAM_KEY",
                                "max_concurrency": SLOTS,
                            }
                        ],
                    }
                ],
            }
        )
    )
    env = {"PROMPTBUS_ADMIN_KEY": ADMIN}
    worker_env = {"PB_TEST_UPSTREAM_KEY": "sk-fake"}
    procs = [Proc([*PROMPTBUS, "worker", "-c", str(config)], work / "worker.log", worker_env)]
    ports = [free_port() for _ in range(2)]
    try:
        for i, port in enumerate(ports):
            args = [*PROMPTBUS, "ingress", "-c", str(config), "--port", str(port)]
            procs.append(Proc(args, work / f"ingress{i}.log", env))
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        for base, proc in zip(bases, procs[1:], strict=True):
            wait_http(f"{base}/readyz", proc)
        result = Stack(bases, upstream)
        probe = result.key("probe")

        async def served() -> None:
            async with httpx.AsyncClient(timeout=10) as http:
                for _ in range(100):
                    codes = {(await result.chat(http, probe, "probe-0")).status_code for _ in bases}
                    if codes == {200}:
                        return
                    await asyncio.sleep(0.1)
            raise TimeoutError(procs[0].output())

        asyncio.run(served())
        yield result
    finally:
        for proc in reversed(procs):
            proc.stop()
        upstream.server.stop()


def test_a_flooding_tenant_waits_while_another_starts_at_once(stack: Stack) -> None:
    """Tenant a sends 500 requests at once through two ingresses, tenant b 5: a never
    has more than its cap running at the upstream, b's start within one upstream latency,
    and every request of both is answered."""
    flood = stack.key("a")
    stack.admin("PUT", "/admin/tenants/a", json={"limits": {"max_inflight": CAP}})
    light = stack.key("b")

    async def run() -> tuple[list[httpx.Response], list[httpx.Response], dict[str, float]]:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            floods = [asyncio.create_task(stack.chat(http, flood, f"a-{i}")) for i in range(500)]
            await until(lambda: stack.upstream.running["a"] >= CAP)  # a's backlog formed
            await asyncio.sleep(LATENCY_S)
            sent = {f"b-{i}": time.monotonic() for i in range(5)}
            lights = await asyncio.gather(*(stack.chat(http, light, tag) for tag in sent))
            started = {tag: stack.upstream.arrived[tag] - at for tag, at in sent.items()}
            return list(await asyncio.gather(*floods)), lights, started

    floods, lights, started = asyncio.run(run())
    assert [r.status_code for r in lights] == [200] * 5, [r.text for r in lights]
    assert max(started.values()) < LATENCY_S, started
    assert {r.status_code for r in floods} == {200}, next(
        r.text for r in floods if r.status_code != 200
    )
    assert stack.upstream.peak["a"] == CAP  # used to the full, never beyond, on two ingresses


def test_a_request_that_finds_no_slot_in_its_time_gets_429(stack: Stack) -> None:
    key = stack.key("solo", max_inflight=1)

    async def run() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as http:
            first = asyncio.create_task(stack.chat(http, key, "solo-0"))
            await until(lambda: stack.upstream.running["solo"] >= 1)
            second = await stack.chat(http, key, "solo-1", **{"x-promptbus-timeout": "0.2"})
            return await first, second

    first, second = asyncio.run(run())
    assert first.status_code == 200
    assert second.status_code == 429, second.text
    error = second.json()["error"]
    assert error["code"] == "concurrency_limit_exceeded"
    assert "key key_" in error["message"] and "1 requests in flight" in error["message"]
    assert second.headers["retry-after"] == "1"


def test_slots_of_requests_whose_clients_left_come_back(stack: Stack) -> None:
    """Callers that hang up (streams and plain requests) free their slots: the key can
    then run its cap again at once."""
    key = stack.key("leavers", max_inflight=4)

    async def leave() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            calls = [asyncio.create_task(stack.chat(http, key, f"leavers-{i}")) for i in range(8)]
            streams = []
            for i in range(2):
                request = http.build_request(
                    "POST",
                    f"{stack.ingresses[i % 2]}/v1/chat/completions",
                    json={
                        "model": "fair-gpt",
                        "stream": True,
                        "messages": [{"role": "user", "content": f"leavers-s{i}"}],
                    },
                    headers={"Authorization": f"Bearer {key}"},
                )
                streams.append(asyncio.create_task(http.send(request, stream=True)))
            await asyncio.sleep(0.2)
            for task in [*calls, *streams]:
                task.cancel()
            await asyncio.gather(*calls, *streams, return_exceptions=True)

    async def again() -> list[float]:
        async with httpx.AsyncClient(timeout=30) as http:
            began = time.monotonic()
            replies = await asyncio.gather(
                *(stack.chat(http, key, f"leavers-again-{i}") for i in range(4))
            )
            assert [r.status_code for r in replies] == [200] * 4, [r.text for r in replies]
            return [stack.upstream.arrived[f"leavers-again-{i}"] - began for i in range(4)]

    asyncio.run(leave())
    time.sleep(2 * LATENCY_S)  # what had reached the upstream has finished
    assert max(asyncio.run(again())) < LATENCY_S  # all four slots free: none waited
