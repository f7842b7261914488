"""broker/nats/parser.py: the same calls on the client as nats-py's parser, however the
server's bytes are cut into reads, and the parser our connections use."""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from broker.nats.connection import GuardedNATS, connect
from broker.nats.credentials import Role
from broker.nats.parser import WireParser
from tests import bus


class Client:
    """What a parser calls on nats-py's client, recorded; a reconnect (the parser's
    ``reset``) when the ``reset_at``-th message arrives."""

    def __init__(self, reset_at: int = 0) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.reset_at = reset_at
        self.parser: Parser | None = None

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        self.calls.append(("msg", sid, subject, reply, data, headers))
        if len(self.calls) == self.reset_at and self.parser is not None:
            self.parser.reset()

    async def _process_ping(self) -> None:
        self.calls.append(("ping",))

    async def _process_pong(self) -> None:
        self.calls.append(("pong",))

    async def _process_info(self, info: dict[str, Any]) -> None:
        self.calls.append(("info", info))

    async def _process_err(self, err: str) -> None:
        self.calls.append(("err", err))


tokens = st.text(alphabet="abz.>*_-019", min_size=1, max_size=10).map(str.encode)
payloads = st.binary(max_size=40) | st.sampled_from([b"MSG a 1 2\r\n", b"\r\n\r\n", b"x" * 5000])
header_blocks = st.sampled_from(
    [b"NATS/1.0\r\n\r\n", b"NATS/1.0\r\nPb-Kind: response\r\n\r\n", b"NATS/1.0 503\r\n\r\n"]
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["msg", "hmsg", "hmsg", "ctl", "odd"]))
    subject, sid = draw(tokens), draw(st.integers(0, 10**6))
    reply = draw(st.none() | tokens)
    at = f" {reply.decode()}" if reply else ""
    body = draw(payloads)
    if kind == "msg":
        return f"MSG {subject.decode()} {sid}{at} {len(body)}\r\n".encode() + body + b"\r\n"
    if kind == "hmsg":
        head = draw(header_blocks)
        line = f"HMSG {subject.decode()} {sid}{at} {len(head)} {len(head) + len(body)}\r\n"
        return line.encode() + head + body + b"\r\n"
    if kind == "ctl":
        info = b"INFO " + json.dumps({"server_id": draw(tokens).decode()}).encode() + b"\r\n"
        return draw(
            st.sampled_from(
                [b"PING\r\n", b"PONG\r\n", b"+OK\r\n", b"-ERR 'Stale Connection'\r\n", info]
            )
        )
    # forms nats-server does not send, which nats-py's regular expressions still take
    # (or refuse): the fallback must behave the same
    return draw(
        st.sampled_from(
            [
                b"MSG\ta\t1\t3\r\nabc\r\n",
                b"MSG  a 1 3\r\nabc\r\n",
                b"HMSG a 1 x 12 12\r\nNATS/1.0\r\n\r\n\r\n",
                b"MSG a 1 -3\r\n",
                b"BOGUS\r\n",
            ]
        )
    )


async def run(parser_type: type[Parser], stream: bytes, cuts: list[int], reset_at: int) -> Any:
    client = Client(reset_at)
    parser = parser_type(client)
    client.parser = parser
    error = None
    bounds = [0, *sorted({min(c, len(stream)) for c in cuts}), len(stream)]
    for start, end in itertools.pairwise(bounds):
        try:
            await parser.parse(stream[start:end])
        except ProtocolError:
            error = start
            break
    return client.calls, error, bytes(parser.buf), parser.state, parser.needed


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=300)
@given(
    st.lists(frames(), max_size=12).map(b"".join),
    st.lists(st.integers(0, 6000), max_size=8),
    st.integers(0, 8),
)
async def test_every_read_is_taken_as_nats_py_takes_it(
    stream: bytes, cuts: list[int], reset_at: int
) -> None:
    assert await run(WireParser, stream, cuts, reset_at) == await run(
        Parser, stream, cuts, reset_at
    )


async def test_many_messages_in_one_read() -> None:
    """The case it is for: one read with dozens of messages, the last one cut short."""
    one = b"HMSG in.x 7 _INBOX.r 28 33\r\nNATS/1.0\r\nPb-Kind: reply\r\n\r\nhello\r\n"
    stream = one * 40
    for parser_type in (WireParser, Parser):
        client = Client()
        parser = parser_type(client)
        await parser.parse(stream[:-10])
        assert len(client.calls) == 39
        await parser.parse(stream[-10:])
        assert client.calls[-1] == (
            "msg",
            7,
            b"in.x",
            b"_INBOX.r",
            b"hello",
            b"NATS/1.0\r\nPb-Kind: reply\r\n\r\n",
        )
        assert len(client.calls) == 40 and parser.buf == bytearray()


async def test_our_connections_read_with_it(nats_url: str) -> None:
    """Through a real server: many messages a read, and one larger than a read."""
    nc = await connect(nats_url, "parser-test", bus.CREDENTIALS.login(Role.ADMIN))
    assert isinstance(nc, GuardedNATS) and isinstance(nc._ps, WireParser)
    try:
        subject = f"parser.{uuid.uuid4().hex}"
        sub = await nc.subscribe(subject)
        sent = [(str(i).encode() * (i % 50), {"Pb-Seq": str(i)}) for i in range(500)]
        sent.append((b"z" * 200_000, {"Pb-Seq": "large"}))
        for body, headers in sent:
            await nc.publish(subject, body, headers=headers)
        got = [await sub.next_msg(timeout=5) for _ in sent]
        assert [(m.data, m.headers) for m in got] == sent
    finally:
        await nc.close()
