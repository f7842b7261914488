"""The ingress's transport sends what one turn of the event loop wrote as one buffer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable

from ingress.coalescing import CoalescingTransport


class _Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport


async def _pair() -> tuple[asyncio.Transport, socket.socket]:
    """A real socket transport on one end of a socketpair, and the other end."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(_Recorder, ours)
    return transport, theirs


async def _read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)


def _counted(inner: asyncio.Transport) -> list[bytes]:
    """What the inner transport is asked to send, a system call an item."""
    sends: list[bytes] = []
    write = inner.write

    def counting(data: bytes | bytearray | memoryview) -> None:
        sends.append(bytes(data))
        write(data)

    def counting_lines(lines: Iterable[bytes | bytearray | memoryview]) -> None:
        counting(b"".join(lines))  # uvloop sends a writelines as one writev

    inner.write = counting  # type: ignore[method-assign]
    inner.writelines = counting_lines  # type: ignore[method-assign,assignment]
    return sends


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


async def test_a_response_s_head_and_body_leave_as_one_send() -> None:
    inner, peer = await _pair()
    sends = _counted(inner)
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(HEAD)
    assert sends == []  # held for its body
    assert transport.get_write_buffer_size() == len(HEAD)
    transport.write(b"ok")
    assert sends == [HEAD + b"ok"]  # at once, not at the end of the turn
    assert await _read_all(peer) == HEAD + b"ok"
    transport.write(b"data: more\n\n")  # a stream's later events are not held
    assert sends[1:] == [b"data: more\n\n"]
    await asyncio.sleep(0)
    assert len(sends) == 2  # nothing was left to flush
    transport.close()
    peer.close()


async def test_a_head_nothing_follows_leaves_at_the_end_of_the_turn() -> None:
    inner, peer = await _pair()
    sends = _counted(inner)
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert sends == []
    await asyncio.sleep(0)
    assert sends == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    assert await _read_all(peer) == sends[0]
    transport.close()
    peer.close()


async def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    inner, peer = await _pair()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
    transport.close()
    assert transport.is_closing()
    assert await _read_all(peer) == b"HTTP/1.1 503 Service Unavailable\r\n\r\n"
    peer.close()

    inner, peer = await _pair()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")  # held, then dropped
    transport.abort()
    await asyncio.sleep(0.01)
    assert await _read_all(peer) == b""  # the connection ended with nothing on it
    peer.close()


async def test_everything_but_writing_is_the_inner_transport_s() -> None:
    inner, peer = await _pair()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    assert transport.get_extra_info("socket") is inner.get_extra_info("socket")
    assert transport.get_protocol() is inner.get_protocol()
    transport.pause_reading()
    assert not transport.is_reading()
    transport.resume_reading()
    assert transport.is_reading()
    transport.set_write_buffer_limits(high=1024)
    assert transport.get_write_buffer_limits()[1] == 1024  # (low, high)
    transport.close()
    peer.close()
