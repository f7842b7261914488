"""Hostile input on a stack whose nats-server keeps NATS's own 1 MiB ``max_payload``.

Every test ends by checking that the process it aimed at still serves everybody else:
oversized bodies and replies, JSON nested thousands deep, a request that kills every
worker that takes it (poison), slow clients holding connections, and a request stored
after its publisher had reported it failed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import nats
import pytest
import yaml

from broker.nats.embedded import EmbeddedNats, free_port
from schemas.config import HEADER_ROOM
from tests import bus
from tests.procs import PROMPTBUS, Proc, wait_http

NATS_LIMIT = 1024 * 1024  # nats-server's default max_payload, deliberately not ours
BODY_LIMIT = NATS_LIMIT - HEADER_ROOM  # what the ingress must follow
CHAT = "/v1/chat/completions"


class HangingUpstream:
    """An OpenAI-compatible server that takes requests and never answers them: the
    stand-in for a request that wedges or crashes its worker. Counts what it received."""

    def __init__(self) -> None:
        self.hits = 0
        self.arrived = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                owner.hits += 1
                owner.arrived.set()
                time.sleep(120)  # the worker holding it is killed meanwhile

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


class LimitStack:
    def __init__(self, workdir: Path, nats_url: str, config: Path, ingress: str) -> None:
        self.workdir = workdir
        self.nats_url = nats_url
        self.config = config
        self.ingress = ingress
        self.workers: list[Proc] = []

    def start_worker(self, *models: str) -> Proc:
        args = [*PROMPTBUS, "worker", "-c", str(self.config)]
        for model in models:
            args += ["--model", model]
        n = len(self.workers)
        proc = Proc(args, self.workdir / f"worker-{n}.log", {"HANG_KEY": "sk-hang"})
        self.workers.append(proc)
        return proc

    def chat(self, content: str = "hello", **extra: object) -> httpx.Response:
        body = {"model": "mock-gpt", "messages": [{"role": "user", "content": content}]}
        return httpx.post(f"{self.ingress}{CHAT}", json=body | extra, timeout=30)


@pytest.fixture(scope="module")
def hanging() -> Iterator[HangingUpstream]:
    upstream = HangingUpstream()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def limits(
    tmp_path_factory: pytest.TempPathFactory, hanging: HangingUpstream
) -> Iterator[LimitStack]:
    work = tmp_path_factory.mktemp("limits")
    server = EmbeddedNats(
        work / "nats",
        log_file=work / "nats.log",
        max_payload=NATS_LIMIT,
        credentials_dir=bus.CREDENTIALS.directory,
        brokers=bus.BROKERS,
    )
    server.start()
    port = free_port()
    config = {
        "nats": {"url": server.url, **bus.config_section()},
        "ingress": {"default_timeout_s": 30, "header_timeout_s": 1.0, "max_connections": 300},
        "worker": {"ack_wait_s": 1.5, "heartbeat_s": 0.5, "presence_ttl_s": 3, "max_deliver": 2},
        "model_list": [
            {"model_name": "mock-gpt", "deployments": [{"provider": "mock"}]},
            {
                "model_name": "mock-embed",
                "mode": "embeddings",
                "deployments": [{"provider": "mock"}],
            },
            {
                "model_name": "hang-gpt",
                "deployments": [
                    {
                        "provider": "openai",
                        "base_url": hanging.url,
                        "api_key_env": "HANG_KEY",
                        "timeout_s": 100,
                        "retry": {"max_attempts": 1},
                    }
                ],
            },
        ],
    }
    path = work / "promptbus.yaml"
    path.write_text(yaml.safe_dump(config))
    ingress = Proc(
        [*PROMPTBUS, "ingress", "-c", str(path), "--port", str(port)], work / "ingress.log"
    )
    stack = LimitStack(work, server.url, path, f"http://127.0.0.1:{port}")
    try:
        stack.start_worker("mock-gpt", "mock-embed")
        wait_http(f"{stack.ingress}/readyz", ingress)
        deadline = time.monotonic() + 30
        while stack.chat().status_code != 200:
            assert time.monotonic() < deadline, stack.workers[0].output()
            time.sleep(0.2)
        yield stack
    finally:
        for proc in [ingress, *stack.workers]:
            proc.stop()
        server.stop()


def ask_over_nats(
    stack: LimitStack, body: bytes, headers: dict[str, str], timeout: float
) -> tuple[dict[str, str], bytes] | None:
    """Queue ``body`` on pb.chat.mock-gpt as a plain NATS client (no reply parts): the
    reply's headers and body, or None if none came within ``timeout``."""

    async def ask() -> tuple[dict[str, str], bytes] | None:
        nc = await bus.connect(stack.nats_url)
        try:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            sent = {"Pb-Reply-To": inbox, **headers}
            await nc.jetstream().publish("pb.chat.mock-gpt", body, headers=sent)
            try:
                msg = await sub.next_msg(timeout=timeout)
            except nats.errors.TimeoutError:
                return None
            return dict(msg.headers or {}), msg.data
        finally:
            await nc.close()

    return asyncio.run(ask())


def _still_serving(stack: LimitStack) -> None:
    assert httpx.get(f"{stack.ingress}/readyz", timeout=5).status_code == 200
    answer = stack.chat("still there?")
    assert answer.status_code == 200, answer.text
    assert "still there?" in answer.json()["choices"][0]["message"]["content"]


def test_a_body_nats_cannot_carry_is_refused_with_413(limits: LimitStack) -> None:
    """The issue's body: ~1,048,300 bytes, under the old 10 MB cap, over NATS's 1 MiB
    once the headers are added. It used to cost the ingress its connection for good."""
    filler = "x" * (1_048_300 - 100)
    response = limits.chat(filler, max_tokens=1)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "request_too_large"
    assert str(BODY_LIMIT) in error["message"]
    _still_serving(limits)


def test_a_body_just_under_the_limit_is_carried(limits: LimitStack) -> None:
    overhead = len(json.dumps({"model": "mock-gpt", "messages": [{"role": "user", "content": ""}]}))
    filler = "y" * (BODY_LIMIT - overhead - 50)
    response = limits.chat(filler, max_tokens=1)
    assert response.status_code == 200, response.text
    _still_serving(limits)


def test_a_reply_larger_than_a_nats_message_arrives_whole(limits: LimitStack) -> None:
    """The mock echoes the prompt: two choices of a 700 kB word make a 1.4 MB answer,
    sent by the worker in parts and put together by the ingress."""
    word = "z" * 700_000
    response = limits.chat(word, n=2)
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert len(response.content) > NATS_LIMIT
    assert all(word in choice["message"]["content"] for choice in choices)
    _still_serving(limits)


def test_a_thousand_embeddings_arrive_whole(limits: LimitStack) -> None:
    inputs = [f"text number {i}" for i in range(1000)]
    response = httpx.post(
        f"{limits.ingress}/v1/embeddings",
        json={"model": "mock-embed", "input": inputs, "dimensions": 1024},
        timeout=60,
    )
    assert response.status_code == 200, response.text[:300]
    data = response.json()["data"]
    assert [item["index"] for item in data] == list(range(1000))
    assert all(len(item["embedding"]) == 1024 for item in data)
    assert len(response.content) > NATS_LIMIT
    _still_serving(limits)


def test_a_nats_caller_gets_an_error_for_a_reply_it_cannot_take_whole(limits: LimitStack) -> None:
    """A plain NATS client that does not reassemble parts is told the reply is too large
    instead of waiting out its deadline; the worker keeps its connection and serves on."""

    body = json.dumps(
        {"model": "mock-gpt", "n": 2, "messages": [{"role": "user", "content": "w" * 700_000}]}
    ).encode()
    reply = ask_over_nats(limits, body, {"Pb-Request-Id": "too-large-reply"}, 20)
    assert reply is not None
    headers, data = reply
    assert headers["Pb-Kind"] == "error"
    assert headers["Pb-Status"] == "502"
    assert json.loads(data)["error"]["code"] == "response_too_large"
    _still_serving(limits)


@pytest.mark.parametrize(
    "field",
    ["tools.function.parameters", "response_format.json_schema.schema", "tool_choice"],
)
def test_json_nested_thousands_deep_is_a_400_naming_the_param(
    limits: LimitStack, field: str
) -> None:
    deep = '{"a":' * 3000 + "1" + "}" * 3000
    if field == "tool_choice":
        extra = '"tool_choice":' + "[" * 3000 + "]" * 3000
    elif field == "tools.function.parameters":
        extra = '"tools":[{"type":"function","function":{"name":"f","parameters":' + deep + "}}]"
    else:
        extra = (
            '"response_format":{"type":"json_schema","json_schema":{"name":"s","schema":'
            + deep
            + "}}"
        )
    body = '{"model":"mock-gpt","messages":[{"role":"user","content":"hi"}],' + extra + "}"
    response = httpx.post(
        f"{limits.ingress}{CHAT}", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["code"] == "json_too_deep"
    assert error["param"] == field
    _still_serving(limits)


def test_deep_json_sent_over_nats_is_refused_by_the_worker(limits: LimitStack) -> None:
    body = (
        '{"model":"mock-gpt","messages":[{"role":"user","content":"hi"}],"tool_choice":'
        + "[" * 5000
        + "]" * 5000
        + "}"
    ).encode()
    reply = ask_over_nats(limits, body, {"Pb-Request-Id": "deep"}, 20)
    assert reply is not None
    headers, data = reply
    assert headers["Pb-Status"] == "400"
    assert json.loads(data)["error"]["param"] == "tool_choice"
    _still_serving(limits)


def test_a_tiny_timeout_is_a_400_naming_the_header(limits: LimitStack) -> None:
    response = httpx.post(
        f"{limits.ingress}{CHAT}",
        json={"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-promptbus-timeout": "0.001"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "x-promptbus-timeout"


def test_a_request_stored_after_its_publisher_gave_up_never_runs(limits: LimitStack) -> None:
    """What a NATS outage leaves behind: a publish that reaches the stream after the
    ingress told its caller 503. The worker drops it unrun and unanswered."""

    body = json.dumps({"model": "mock-gpt", "messages": [{"role": "user", "content": "late"}]})
    gave_up = str(int(time.time() * 1000) - 5000)  # the publisher gave up 5 s ago
    headers = {"Pb-Request-Id": "late", "Pb-Enqueue-By": gave_up}
    assert ask_over_nats(limits, body.encode(), headers, 3) is None

    async def queued() -> int:
        nc = await bus.connect(limits.nats_url)
        try:
            return (await nc.jetstream().stream_info("PB_REQUESTS")).state.messages
        finally:
            await nc.close()

    assert asyncio.run(queued()) == 0  # taken off the queue, not left to come back
    _still_serving(limits)


def test_slow_clients_cannot_deny_service(limits: LimitStack) -> None:
    """Hundreds of connections that never finish their headers (slowloris): the others
    are still served, the slow ones are cut off after ingress.header_timeout_s, and past
    ingress.max_connections new connections are refused at once instead of hanging."""
    host, port = limits.ingress.removeprefix("http://").split(":")
    slow: list[socket.socket] = []
    try:
        for _ in range(400):  # over max_connections (300)
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            slow.append(sock)
        # Beyond the cap: answered 503 at once.
        slow[-1].settimeout(5)
        assert b" 503 " in slow[-1].recv(4096)
        time.sleep(1.5)  # past the header timeout: the slow ones are gone
        _still_serving(limits)
        slow[0].settimeout(5)
        assert b" 408 " in slow[0].recv(4096)
    finally:
        for sock in slow:
            sock.close()


def test_a_poison_request_ends_after_max_deliver_starts(
    limits: LimitStack, hanging: HangingUpstream
) -> None:
    """A request that takes down every worker that starts it (here: the worker is killed
    each time the upstream receives it) is started ``worker.max_deliver`` (2) times, then
    answered 500 poison_request and kept on the dead-letter subject."""
    worker = limits.start_worker("hang-gpt")
    result: dict[str, httpx.Response] = {}

    def call() -> None:
        deadline = time.monotonic() + 30
        while True:  # until the ingress has seen the new worker's presence
            response = httpx.post(
                f"{limits.ingress}{CHAT}",
                json={"model": "hang-gpt", "messages": [{"role": "user", "content": "poison"}]},
                headers={"x-promptbus-timeout": "90"},
                timeout=100,
            )
            if response.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        result["response"] = response

    caller = threading.Thread(target=call)
    caller.start()
    for start in (1, 2):
        assert hanging.arrived.wait(30), worker.output()
        hanging.arrived.clear()
        assert hanging.hits == start
        worker.signal(signal.SIGKILL)
        worker.popen.wait()
        worker = limits.start_worker("hang-gpt")
    caller.join(60)
    response = result["response"]
    assert response.status_code == 500, response.text
    assert response.json()["error"]["code"] == "poison_request"
    assert hanging.hits == 2  # not run a third time
    worker.stop()

    async def dead_letters() -> list[bytes]:
        nc = await bus.connect(limits.nats_url)
        try:
            js = nc.jetstream()
            info = await js.stream_info("PB_REQUESTS_DEAD")
            msg = await js.get_msg("PB_REQUESTS_DEAD", info.state.first_seq)
            return [msg.data or b"", (msg.headers or {}).get("Pb-Dead-Reason", "").encode()]
        finally:
            await nc.close()

    body, reason = asyncio.run(dead_letters())
    assert b"poison" in body
    assert b"started 2 times" in reason
    _still_serving(limits)
