"""Bounds on HTTP connections, so that slow or idle clients cannot starve the others.

uvicorn has an idle keep-alive timeout but none for reading a request's headers: a
client that opens connections and sends a header line now and then (slowloris) holds a
file descriptor each, for ever, until the process can accept no one. This protocol adds:

- a header timeout (``ingress.header_timeout_s``): a request whose headers are not all
  in by then gets ``408`` and the connection is closed; it runs from the connection's
  start and from the first byte of each later request on a kept-alive connection;
- a connection cap (``ingress.max_connections``): past it a new connection is answered
  ``503`` and closed at once, so descriptors stay free for the ones being served.
"""

from __future__ import annotations

import asyncio

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ingress.coalescing import CoalescingTransport


def _answer(status: bytes, code: str | None, message: str, kind: str) -> bytes:
    """A whole HTTP/1.1 response with an OpenAI error body, closing the connection."""
    body = msgspec.json.encode(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}
    )
    head = (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return head + body


_BUSY = _answer(
    b"503 Service Unavailable",
    "too_many_connections",
    "Too many open connections to this ingress (ingress.max_connections); retry shortly.",
    "service_unavailable_error",
)
_SLOW = _answer(
    b"408 Request Timeout",
    "header_timeout",
    "The request headers did not arrive in time (ingress.header_timeout_s).",
    "invalid_request_error",
)


def bounded_protocol(header_timeout_s: float, max_connections: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the two bounds (uvicorn takes a class), writing
    through a :class:`CoalescingTransport` (one ``send`` per response)."""

    class BoundedProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(CoalescingTransport(transport, self.loop))
            self._header_timer: asyncio.TimerHandle | None = None
            if len(self.connections) > max_connections:
                transport.write(_BUSY)
                transport.close()
                return
            self._start_header_timer()

        def _start_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._too_slow)

        def _stop_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.write(_SLOW)
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._start_header_timer()

        def on_headers_complete(self) -> None:
            self._stop_header_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_header_timer()
            super().connection_lost(exc)

    return BoundedProtocol
