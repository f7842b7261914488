"""workers/providers/http1.py against real servers on 127.0.0.1: reuse, limits, framing,
decoding, and every way an exchange can break."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from broker.nats.embedded import free_port
from schemas.errors import BrokerError
from workers.providers import http1
from workers.providers.errors import classify
from workers.providers.http import post_whole
from workers.providers.http1 import ConnectError, Http1Pool, HttpError

Raw = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Served:
    def __init__(self) -> None:
        self.transports: set[int] = set()  # the connections requests came on
        self.inflight = 0
        self.most_inflight = 0
        self.release = asyncio.Event()
        self.release.set()

    @property
    def connections(self) -> int:
        return len(self.transports)


@pytest.fixture
async def app_server() -> AsyncIterator[tuple[str, Served]]:
    served = Served()

    async def chat(request: web.Request) -> web.StreamResponse:
        served.transports.add(id(request.transport))
        served.inflight += 1
        served.most_inflight = max(served.most_inflight, served.inflight)
        try:
            await served.release.wait()
            body = await request.read()
            kind = request.query.get("kind", "plain")
            if kind == "gzip":
                return web.Response(
                    body=gzip.compress(b"zipped:" + body), headers={"Content-Encoding": "gzip"}
                )
            if kind == "chunked":
                response = web.StreamResponse()
                response.enable_chunked_encoding()
                await response.prepare(request)
                for piece in (b"one,", b"two,", body):
                    await response.write(piece)
                await response.write_eof()
                return response
            if kind == "limited":
                return web.json_response(
                    {"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "7"}
                )
            return web.Response(body=b"echo:" + body)
        finally:
            served.inflight -= 1

    app = web.Application()
    app.router.add_post("/v1/chat", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", served
    await runner.cleanup()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Raw], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Raw) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()


async def test_one_connection_serves_request_after_request(
    app_server: tuple[str, Served],
) -> None:
    base, served = app_server
    pool = Http1Pool(base, limit=4, connect_timeout_s=5)
    for i in range(20):
        answer = await pool.post(f"{base}/v1/chat", f"r{i}".encode(), {"X-Test": "1"})
        assert (answer.status, answer.body) == (200, f"echo:r{i}".encode())
    assert served.connections == 1
    await pool.aclose()


async def test_a_connection_idle_too_long_is_not_reused(
    app_server: tuple[str, Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, served = app_server
    monkeypatch.setattr(http1, "IDLE_S", 0.1)
    pool = Http1Pool(base, limit=4, connect_timeout_s=5)
    await pool.post(f"{base}/v1/chat", b"a", {})
    await pool.post(f"{base}/v1/chat", b"b", {})
    assert served.connections == 1
    await asyncio.sleep(0.2)
    assert (await pool.post(f"{base}/v1/chat", b"c", {})).body == b"echo:c"
    assert served.connections == 2
    await pool.aclose()


async def test_callers_past_the_limit_wait_for_a_connection(
    app_server: tuple[str, Served],
) -> None:
    base, served = app_server
    pool = Http1Pool(base, limit=3, connect_timeout_s=5)
    served.release.clear()
    calls = [asyncio.create_task(pool.post(f"{base}/v1/chat", b"x", {})) for _ in range(10)]
    await asyncio.sleep(0.2)
    assert served.inflight == 3  # the other 7 wait in the pool, not on the server
    served.release.set()
    answers = await asyncio.gather(*calls)
    assert [a.body for a in answers] == [b"echo:x"] * 10
    assert served.most_inflight == 3 and served.connections == 3
    await pool.aclose()


@pytest.mark.parametrize(("kind", "body"), [("gzip", b"zipped:hi"), ("chunked", b"one,two,hi")])
async def test_gzip_and_chunked_answers_are_read_whole(
    app_server: tuple[str, Served], kind: str, body: bytes
) -> None:
    base, _ = app_server
    pool = Http1Pool(base, limit=2, connect_timeout_s=5)
    for _ in range(2):  # and the connection is reused after each
        answer = await pool.post(f"{base}/v1/chat?kind={kind}", b"hi", {})
        assert answer.body == body
    await pool.aclose()


async def test_an_error_answer_keeps_its_headers_for_the_classifier(
    app_server: tuple[str, Served],
) -> None:
    base, _ = app_server
    pool = Http1Pool(base, limit=2, connect_timeout_s=5)
    reader = lambda status, body, headers: classify("dep", status, body, headers)  # noqa: E731
    with pytest.raises(BrokerError) as caught:
        await post_whole(pool, "dep", f"{base}/v1/chat?kind=limited", b"{}", {}, reader, base)
    assert caught.value.status == 429 and caught.value.retry_after == 7
    await pool.aclose()


async def test_an_answer_framed_by_the_end_of_the_connection(
    raw_server: Callable[[Raw], Awaitable[str]],
) -> None:
    async def old_style(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    base = await raw_server(old_style)
    pool = Http1Pool(base, limit=1, connect_timeout_s=5)
    assert (await pool.post(f"{base}/x", b"", {})).body == b"all of it"
    assert (await pool.post(f"{base}/x", b"", {})).body == b"all of it"  # a new connection
    await pool.aclose()


async def test_a_connection_broken_mid_answer_is_an_error_and_not_reused(
    raw_server: Callable[[Raw], Awaitable[str]],
) -> None:
    accepted = 0

    async def breaks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()
        writer.close()

    base = await raw_server(breaks)
    pool = Http1Pool(base, limit=1, connect_timeout_s=5)
    for _ in range(2):
        with pytest.raises(HttpError, match="closed the connection"):
            await pool.post(f"{base}/x", b"", {})
    assert accepted == 2
    await pool.aclose()


async def test_not_http_is_an_error(raw_server: Callable[[Raw], Awaitable[str]]) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    base = await raw_server(garbage)
    pool = Http1Pool(base, limit=1, connect_timeout_s=5)
    with pytest.raises(HttpError, match="not an HTTP answer"):
        await pool.post(f"{base}/x", b"", {})
    await pool.aclose()


async def test_an_answer_past_the_size_bound_is_refused(
    app_server: tuple[str, Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = app_server
    monkeypatch.setattr(http1, "MAX_BODY_BYTES", 1000)
    pool = Http1Pool(base, limit=1, connect_timeout_s=5)
    with pytest.raises(HttpError, match="larger than 1000 bytes"):
        await pool.post(f"{base}/v1/chat", b"x" * 2000, {})
    assert (await pool.post(f"{base}/v1/chat", b"small", {})).body == b"echo:small"
    await pool.aclose()


async def test_a_refused_connection_is_unreachable() -> None:
    base = f"http://127.0.0.1:{free_port()}"
    pool = Http1Pool(base, limit=1, connect_timeout_s=5)
    with pytest.raises(ConnectError):
        await pool.post(f"{base}/x", b"", {})
    with pytest.raises(BrokerError) as caught:
        await post_whole(pool, "dep", f"{base}/x", b"", {}, lambda *a: BrokerError(500, ""), base)
    assert caught.value.status == 502 and caught.value.detail.code == "upstream_unreachable"
    await pool.aclose()


async def test_a_header_with_a_line_break_is_never_sent(
    app_server: tuple[str, Served],
) -> None:
    base, served = app_server
    pool = Http1Pool(base, limit=1, connect_timeout_s=5)
    with pytest.raises(HttpError, match="line break"):
        await pool.post(f"{base}/v1/chat", b"", {"X-Forged": "a\r\nX-Admin: 1"})
    assert served.connections == 0
    await pool.aclose()


async def test_a_cancelled_exchange_closes_its_connection(
    app_server: tuple[str, Served],
) -> None:
    base, served = app_server
    pool = Http1Pool(base, limit=1, connect_timeout_s=5)
    served.release.clear()
    call = asyncio.create_task(pool.post(f"{base}/v1/chat", b"late", {}))
    await asyncio.sleep(0.1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    served.release.set()
    assert (await pool.post(f"{base}/v1/chat", b"next", {})).body == b"echo:next"
    assert served.connections == 2  # the interrupted one was not reused
    await pool.aclose()
