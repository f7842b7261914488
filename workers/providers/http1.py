"""Keep-alive HTTP/1.1 POSTs whose answer is read whole: the worker's upstream call.

aiohttp spends 115-135 µs of CPU on one such POST here (its request and response
objects, URL handling, cookie jar, timers, tracing hooks); the same exchange over an
asyncio protocol with httptools' parser (the C parser uvicorn uses) spends 9-10 µs,
measured side by side against one nginx. The upstream call is the largest cost in a
worker, so answers read whole go this way; streamed answers stay on aiohttp.

What it does: one pool per deployment, at most ``limit`` connections (callers past it
wait their turn in order), each reused while the server keeps it alive and closed after
``IDLE_S`` unused (60 s, as our aiohttp sessions had it); ``https`` with the system's
certificates, verified; answers in
``Content-Length``, chunked or read-to-close framing, ``gzip``/``deflate`` decoded
(``identity`` asked for); bodies and header blocks bounded. What it does not: proxies,
redirects, HTTP/2. A connection whose exchange was interrupted (cancelled, timed out, a
parse error) is closed, never reused.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

IDLE_S = 60.0  # an idle connection older than this is closed, not reused (as aiohttp's)
MAX_BODY_BYTES = 64 * 1024 * 1024  # an answer read whole
MAX_HEADER_BYTES = 64 * 1024


class HttpError(Exception):
    """The exchange failed below HTTP: the connection broke, or the answer is not HTTP."""


class ConnectError(HttpError):
    """No connection to the server (refused, unresolvable, TLS handshake failed)."""

    def __init__(self, message: str, os_error: OSError | None = None) -> None:
        super().__init__(message)
        self.os_error = os_error


@dataclass(slots=True)
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One connection: a request written, its answer parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.used_at = time.monotonic()
        self.reusable = False
        self._headers: list[tuple[str, str]] = []
        self._names: set[str] = set()
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._to_close = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"not an HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self.waiter is None or self.waiter.done():
            return
        if exc is None and self._to_close:
            self.on_message_complete()  # an answer framed by the end of the connection
            self.reusable = False
            return
        self._fail(HttpError(f"the server closed the connection ({exc or 'EOF'})"))

    # httptools callbacks

    def on_headers_complete(self) -> None:
        # Neither a length nor chunks: the body ends with the connection (HTTP/1.0 style).
        framed = "content-length" in self._names or "transfer-encoding" in self._names
        status = self.parser.get_status_code()
        self._to_close = not framed and status >= 200 and status not in (204, 304)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.waiter is None:
            return  # failed already (or nobody asked)
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._fail(HttpError(f"answer headers larger than {MAX_HEADER_BYTES} bytes"))
            return
        decoded = name.decode("latin-1")
        self._headers.append((decoded, value.decode("latin-1")))
        self._names.add(decoded.lower())

    def on_body(self, body: bytes) -> None:
        if self.waiter is None:
            return
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY_BYTES:
            self._fail(HttpError(f"answer larger than {MAX_BODY_BYTES} bytes"))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            return
        headers = CIMultiDict(self._headers)
        body = b"".join(self._body)
        encoding = headers.get("Content-Encoding", "identity").strip().lower()
        try:
            body = _decoded(body, encoding)
        except (zlib.error, HttpError) as exc:
            waiter.set_exception(HttpError(f"cannot decode a {encoding} answer: {exc}"))
            return
        self.reusable = self.parser.should_keep_alive()
        waiter.set_result(Answer(self.parser.get_status_code(), headers, body))

    # the exchange

    def send(self, request: bytes, body: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self.reusable = False  # until its answer is read whole
        self._headers, self._names, self._header_bytes = [], set(), 0
        self._body, self._body_bytes, self._to_close = [], 0, False
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.writelines([request, body])
        return self.waiter

    def _fail(self, exc: HttpError) -> None:
        self.reusable = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


def _decoded(body: bytes, encoding: str) -> bytes:
    if encoding in ("identity", ""):
        return body
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate, as some servers send
    raise HttpError(f"unsupported content-encoding {encoding!r}")


class Http1Pool:
    """Keep-alive connections to one origin (``scheme://host:port``)."""

    def __init__(self, base_url: str, limit: int, connect_timeout_s: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        self._authority = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host:  # an IPv6 literal
            self._authority = f"[{self.host}]" + ("" if default_port else f":{self.port}")
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._limit = max(1, limit)
        self._connect_timeout_s = connect_timeout_s
        self._idle: collections.deque[_Connection] = collections.deque()
        self._open = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._lines: dict[str, bytes] = {}  # URL -> its request line and Host header
        self._closed = False

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """The server's answer, read whole; ``HttpError`` (``ConnectError``) below HTTP."""
        request = self._head(url, body, headers)
        connection = await self._checkout()
        try:
            answer = await connection.send(request, body)
        except BaseException:
            connection.close()  # interrupted mid-exchange: its state is unknown
            self._checkin(connection)
            raise
        self._checkin(connection)
        return answer

    def _head(self, url: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        line = self._lines.get(url)
        if line is None:
            parts = urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            line = f"POST {target} HTTP/1.1\r\nHost: {self._authority}\r\n".encode("latin-1")
            if len(self._lines) < 64:
                self._lines[url] = line
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        if fields.count("\n") != len(headers) or fields.count("\r") != len(headers):
            raise HttpError("a header holds a line break")  # it would forge headers
        return b"%b%bAccept-Encoding: identity\r\nContent-Length: %d\r\n\r\n" % (
            line,
            fields.encode("latin-1"),
            len(body),
        )

    async def _checkout(self) -> _Connection:
        if self._closed:
            raise HttpError("the client is closed")
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the likeliest alive
            transport = connection.transport
            if (
                connection.reusable
                and transport is not None
                and not transport.is_closing()
                and now - connection.used_at < IDLE_S
            ):
                return connection
            connection.close()
            self._open -= 1
        while self._open >= self._limit:
            turn = asyncio.get_running_loop().create_future()
            self._waiting.append(turn)
            try:
                await turn
            except BaseException:
                if not turn.cancelled() and turn.done():
                    self._wake()  # pass the turn on
                raise
            if self._idle:
                return await self._checkout()
        self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._wake()
            raise

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, connection = await loop.create_connection(
                    _Connection,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None,
                )
        except TimeoutError:
            raise
        except ssl.SSLError as exc:
            raise ConnectError(f"TLS with {self._authority} failed: {exc}", exc) from None
        except OSError as exc:
            raise ConnectError(str(exc.strerror or exc), exc) from None
        return connection

    def _checkin(self, connection: _Connection) -> None:
        if connection.reusable and not self._closed:
            connection.used_at = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
            self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
        self._open = 0
