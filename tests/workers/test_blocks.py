"""Block messages on the batch lane, against a real nats-server and a worker in this
process: every line of a block is answered on its own (its request id and custom id on
its reply) and the block is acked once, after the last; a block that is not one is
dropped, not redelivered; interactive requests still go before a block's waiting lines.
LineMsg settles only its line."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import yaml
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from broker.client import BrokerClient
from broker.nats.subjects import Subjects
from schemas.config import Config
from schemas.envelope import H_CUSTOM_ID, H_KIND, H_REQUEST_ID, RequestMeta
from schemas.line_block import H_LINES, encode_block
from schemas.settings import load_config
from tests import bus
from workers.blocks import LineMsg, lines_of
from workers.worker import Worker

LATENCY_S = 0.3
SUBJECTS = Subjects("blocks", "BLOCKS")


@pytest.fixture(scope="module")
def block_config(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Config:
    path: Path = tmp_path_factory.mktemp("blocks") / "promptbus.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "nats": {
                    "url": nats_url,
                    "subject_prefix": "blocks",
                    "stream": "BLOCKS",
                    **bus.config_section(),
                },
                "worker": {"heartbeat_s": 0.5, "presence_ttl_s": 3, "ack_wait_s": 2},
                "model_list": [
                    {
                        "model_name": "block-mock",
                        "deployments": [
                            {
                                "provider": "mock",
                                "mock_latency_ms": LATENCY_S * 1000,
                                "max_concurrency": 2,
                            }
                        ],
                    },
                ],
            }
        )
    )
    return load_config(path)


@pytest.fixture(scope="module")
async def client(block_config: Config, nats_url: str) -> AsyncIterator[BrokerClient]:
    worker = Worker(block_config)
    await worker.start(nats_url)
    broker = await BrokerClient.connect(block_config, nats_url)
    deadline = time.monotonic() + 10
    while not broker.directory.is_served("block-mock") and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    yield broker
    await broker.close()
    await worker.stop(grace=2)


def _lines(inbox: str, count: int) -> list[tuple[dict[str, str], bytes]]:
    lines = []
    for i in range(count):
        meta = RequestMeta(request_id=f"line-{i}-{uuid.uuid4().hex[:6]}", reply_to=inbox)
        headers = meta.to_headers() | {H_CUSTOM_ID: f"c{i}"}
        body = {"model": "block-mock", "messages": [{"role": "user", "content": f"line {i}"}]}
        lines.append((headers, msgspec.json.encode(body)))
    return lines


async def _queued(js: JetStreamContext) -> int:
    return (await js.stream_info(SUBJECTS.bulk_stream)).state.messages


async def _drained(js: JetStreamContext, within: float = 5.0) -> int:
    """What the batch lane still holds once it is empty, or once ``within`` has passed."""
    deadline = time.monotonic() + within
    while await _queued(js) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return await _queued(js)


async def test_every_line_is_answered_and_the_block_acked_once(
    nats_url: str, client: BrokerClient
) -> None:
    nc = await bus.connect(nats_url)
    js = nc.jetstream()
    inbox = f"_INBOX.blocks.{uuid.uuid4().hex}"
    replies: list[Msg] = []
    all_in = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        replies.append(msg)
        if len(replies) == 6:
            all_in.set()

    await nc.subscribe(inbox, cb=on_reply)
    lines = _lines(inbox, 6)
    await js.publish(
        SUBJECTS.bulk("block-mock"), encode_block(lines), headers={H_LINES: str(len(lines))}
    )
    await asyncio.wait_for(all_in.wait(), 10)
    by_id = {m.headers[H_REQUEST_ID]: m for m in replies if m.headers}
    assert set(by_id) == {h[H_REQUEST_ID] for h, _ in lines}
    for i, (headers, _) in enumerate(lines):
        reply = by_id[headers[H_REQUEST_ID]]
        assert reply.headers is not None and reply.headers[H_KIND] == "response"
        assert reply.headers[H_CUSTOM_ID] == f"c{i}"
        assert msgspec.json.decode(reply.data)["choices"][0]["message"]["content"] == (
            f"mock reply to: line {i}"
        )
    assert await _drained(js) == 0  # acked: gone from the work queue
    await asyncio.sleep(2.5)  # past ack_wait: nothing comes back
    assert len(replies) == 6
    await nc.close()


async def test_a_block_that_is_not_one_is_dropped(nats_url: str, client: BrokerClient) -> None:
    nc = await bus.connect(nats_url)
    js = nc.jetstream()
    await js.publish(SUBJECTS.bulk("block-mock"), b"\xc1 not msgpack", headers={H_LINES: "3"})
    assert await _drained(js) == 0  # termed, not left to be redelivered forever
    await nc.close()


async def test_interactive_goes_before_a_blocks_waiting_lines(
    nats_url: str, client: BrokerClient
) -> None:
    nc = await bus.connect(nats_url)
    js = nc.jetstream()
    inbox = f"_INBOX.blocks.{uuid.uuid4().hex}"
    done: list[float] = []

    async def on_reply(msg: Msg) -> None:
        done.append(time.monotonic())

    await nc.subscribe(inbox, cb=on_reply)
    lines = _lines(inbox, 8)  # four rounds of the pool's two slots
    await js.publish(SUBJECTS.bulk("block-mock"), encode_block(lines), headers={H_LINES: "8"})
    await asyncio.sleep(LATENCY_S / 2)  # two lines run, six wait in the worker
    started = time.monotonic()
    answer = await client.chat(
        {"model": "block-mock", "messages": [{"role": "user", "content": "urgent"}]}
    )
    waited = time.monotonic() - started
    assert answer.choices[0].message.content == "mock reply to: urgent"
    assert waited < 2 * LATENCY_S + 0.15, waited  # behind one running line, not six waiting
    deadline = time.monotonic() + 10
    while len(done) < 8 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert len(done) == 8
    await nc.close()


async def test_a_line_settles_only_itself(nats_url: str) -> None:
    nc = await bus.connect(nats_url)
    reply = "$JS.ACK.BLOCKS_BULK.c.1.42.42.1733000000000000000.0"
    block = Msg(
        nc,
        subject="blocks.bulk.m",
        reply=reply,
        data=encode_block(_lines("x", 3)),
        headers={H_LINES: "3"},
    )
    lines = lines_of(nc, block)
    assert [line.place for line in lines] == [0, 1, 2]
    assert all(isinstance(line, LineMsg) and line.reply == reply for line in lines)
    assert len({line.identity for line in lines}) == 3  # one memory entry per line
    assert [line.key for line in lines] == ["42-0", "42-1", "42-2"]
    sent: list[str] = []

    async def publish(subject: str, *args: object, **kwargs: object) -> None:
        sent.append(subject)

    nc.publish = publish  # type: ignore[method-assign]
    await lines[0].ack()
    await lines[0].term()
    await lines[0].in_progress()
    await lines[1].nak(delay=2.5)
    assert sent == []  # nothing reached the block's ack subject
    assert lines[1].handed_back == 2.5 and lines[0].handed_back is None
    await nc.close()
