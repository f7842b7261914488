"""The subject contract of docs/subjects.md, spoken with raw nats-py: no promptbus code
on the client side, as a service in any language would."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from tests import bus
from tests.conftest import Stack


@pytest.fixture
async def nc(stack: Stack) -> AsyncIterator[Client]:
    conn = await bus.connect(stack.nats_url)
    yield conn
    await conn.drain()


def chat(model: str = "mock-gpt", text: str = "hi", **extra: object) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    ).encode()


async def ask(
    nc: Client,
    subject: str,
    payload: bytes,
    *,
    deadline_s: float = 10,
    extra_headers: dict[str, str] | None = None,
) -> list[Msg]:
    """Publish one request the documented way and collect replies until a final one."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    request_id = uuid.uuid4().hex
    headers = {
        "Pb-Request-Id": request_id,
        "Nats-Msg-Id": request_id,
        "Pb-Reply-To": inbox,
        "Pb-Deadline": str(int((time.time() + deadline_s) * 1000)),
        **(extra_headers or {}),
    }
    ack = await nc.request(subject, payload, headers=headers, timeout=5)
    assert json.loads(ack.data)["stream"] == "PB_REQUESTS"  # the JetStream publish ack
    replies: list[Msg] = []
    while True:
        msg = await sub.next_msg(timeout=15)
        replies.append(msg)
        assert msg.headers is not None
        if msg.headers["Pb-Kind"] in ("response", "end", "error"):
            break
    await sub.unsubscribe()
    return replies


async def test_request_reply(nc: Client) -> None:
    [reply] = await ask(
        nc, "pb.chat.mock-gpt", chat(text="over nats"), extra_headers={"Pb-Request-Id": "mine-1"}
    )
    assert reply.headers is not None
    assert reply.headers["Pb-Status"] == "200"
    assert reply.headers["Pb-Request-Id"] == "mine-1"
    assert reply.headers["Pb-Deployment"] == "mock-gpt/0"
    body = json.loads(reply.data)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "mock reply to: over nats"


async def test_streaming_ends_with_marker(nc: Client) -> None:
    replies = await ask(nc, "pb.chat.mock-gpt", chat(text="a b c", stream=True))
    kinds = [m.headers["Pb-Kind"] for m in replies if m.headers]
    assert kinds[-1] == "end" and replies[-1].data == b""
    assert set(kinds[:-1]) == {"chunk"}
    chunks = [json.loads(m.data) for m in replies[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "mock reply to: a b c"


async def test_invalid_body_gets_error_reply(nc: Client) -> None:
    [reply] = await ask(nc, "pb.chat.mock-gpt", chat(temperature=7))
    assert reply.headers is not None
    assert reply.headers["Pb-Kind"] == "error" and reply.headers["Pb-Status"] == "400"
    assert json.loads(reply.data)["error"]["param"] == "temperature"


async def test_expired_request_never_reaches_upstream(nc: Client, stack: Stack) -> None:
    before = stack.upstream_requests()
    [reply] = await ask(nc, "pb.chat.upstream-gpt", chat("upstream-gpt"), deadline_s=-1)
    assert reply.headers is not None and reply.headers["Pb-Status"] == "504"
    assert json.loads(reply.data)["error"]["code"] == "deadline_exceeded"
    assert stack.upstream_requests() == before


async def test_upstream_error_is_marked(nc: Client) -> None:
    [reply] = await ask(
        nc, "pb.chat.upstream-gpt", chat("upstream-gpt", metadata={"mock_status": "500"})
    )
    assert reply.headers is not None
    assert reply.headers["Pb-Status"] == "500" and reply.headers["Pb-Error-Source"] == "upstream"
    assert json.loads(reply.data)["error"]["type"] == "upstream_error"


async def test_concurrency_limit_holds_excess_in_the_queue(nc: Client) -> None:
    """mock-slow allows 2 in flight: of 6 requests, 2 are un-acked and 4 wait in NATS."""
    js = nc.jetstream()
    consumers = [
        c
        for c in await js.consumers_info("PB_REQUESTS")
        if c.config.filter_subject == "pb.chat.mock-slow"
    ]
    [consumer] = consumers
    assert consumer.config.max_ack_pending == 2
    tasks = [
        asyncio.create_task(ask(nc, "pb.chat.mock-slow", chat("mock-slow", f"r{i}")))
        for i in range(6)
    ]
    # Each pair takes 1 s: the split is seen within the first (later on a loaded box than
    # a fixed sleep allows), then holds.
    split: list[tuple[int, int]] = []
    for _ in range(40):
        info = await js.consumer_info("PB_REQUESTS", consumer.name)
        split.append((info.num_ack_pending, info.num_pending))
        if split[-2:] == [(2, 4), (2, 4)]:
            break
        await asyncio.sleep(0.05)
    assert split[-2:] == [(2, 4), (2, 4)], split
    await asyncio.sleep(0.6)  # one presence heartbeat (0.5 s in the test config)
    kv = await js.key_value("pb_workers")
    [key] = [k for k in await kv.keys() if k.startswith("mock-slow.")]
    beat = json.loads((await kv.get(key)).value)
    assert beat["capacity"] == 2 and beat["inflight"] == 2 and beat["model"] == "mock-slow"
    results = await asyncio.gather(*tasks)
    texts = sorted(json.loads(r[-1].data)["choices"][0]["message"]["content"] for r in results)
    assert texts == sorted(f"mock reply to: r{i}" for i in range(6))


async def test_duplicate_publish_is_answered_once(nc: Client) -> None:
    """Nats-Msg-Id de-duplicates a retried publish: one request, one reply."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    request_id = uuid.uuid4().hex
    headers = {"Pb-Request-Id": request_id, "Nats-Msg-Id": request_id, "Pb-Reply-To": inbox}
    first = json.loads((await nc.request("pb.chat.mock-gpt", chat(), headers=headers)).data)
    second = json.loads((await nc.request("pb.chat.mock-gpt", chat(), headers=headers)).data)
    assert second.get("duplicate") is True and second["seq"] == first["seq"]
    await sub.next_msg(timeout=5)
    with pytest.raises(nats.errors.TimeoutError):
        await sub.next_msg(timeout=0.5)
