"""``promptbus mock-upstream``: a fake OpenAI-compatible HTTP server.

It speaks the real wire format (JSON and SSE, OpenAI error bodies), validates requests
with the same schema as the broker, and misbehaves on command, for tests and benchmarks:

- start-up flags / ``POST /_control`` JSON: ``latency_ms``, ``error_rate`` (0..1),
  ``error_status``, ``chunk_delay_ms``, ``api_key`` (require ``Authorization: Bearer``);
- per request, through the OpenAI ``metadata`` field: ``mock_status`` (answer with that
  HTTP error), ``mock_latency_ms``;
- ``GET /_stats`` returns how many chat requests arrived (``POST /_reset`` zeroes it).

Plain ASGI, no framework, so that as a benchmark baseline it costs next to nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from schemas.chat import ChatCompletionRequest, Model, ModelList, encoder, request_decoder
from schemas.errors import BrokerError, from_validation_error
from workers import mock_content

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class MockSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    latency_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    chunk_delay_ms: float = 0.0
    api_key: str | None = None


class Stats(msgspec.Struct):
    requests: int = 0
    streamed: int = 0
    errors: int = 0


class MockUpstream:
    """The ASGI application; one instance holds the settings and counters."""

    def __init__(self, settings: MockSettings | None = None) -> None:
        self.settings = settings or MockSettings()
        self.stats = Stats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path in ("/v1/chat/completions", "/chat/completions") and method == "POST":
            await self._chat(scope, receive, send)
        elif path in ("/v1/models", "/models") and method == "GET":
            body = ModelList(data=[Model(id="mock", created=0, owned_by="mock-upstream")])
            await _respond(send, 200, encoder.encode(body))
        elif path == "/_stats":
            await _respond(send, 200, encoder.encode(self.stats))
        elif path == "/_reset" and method == "POST":
            self.stats = Stats()
            await _respond(send, 200, b"{}")
        elif path == "/_control" and method == "POST":
            await self._control(receive, send)
        else:
            await _error(send, BrokerError(404, f"no route {method} {path}", code="not_found"))

    async def _control(self, receive: Receive, send: Send) -> None:
        changes = msgspec.json.decode(await _read(receive))
        merged = msgspec.structs.asdict(self.settings) | changes
        try:
            self.settings = msgspec.convert(merged, MockSettings)
        except msgspec.ValidationError as exc:
            await _error(send, from_validation_error(exc))
            return
        await _respond(send, 200, encoder.encode(self.settings))

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.stats.requests += 1
        body = await _read(receive)
        settings = self.settings
        if settings.api_key is not None:
            auth = dict(scope["headers"]).get(b"authorization", b"").decode()
            if auth != f"Bearer {settings.api_key}":
                self.stats.errors += 1
                await _error(
                    send, BrokerError(401, "Incorrect API key provided.", code="invalid_api_key")
                )
                return
        try:
            request = request_decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self.stats.errors += 1
            await _error(send, from_validation_error(exc))
            return
        directives = request.metadata or {}
        latency = float(directives.get("mock_latency_ms", settings.latency_ms))
        if latency:
            await asyncio.sleep(latency / 1000)
        status = int(directives.get("mock_status", 0))
        if not status and settings.error_rate and random.random() < settings.error_rate:
            status = settings.error_status
        if status:
            self.stats.errors += 1
            await _error(send, _simulated_error(status))
            return
        if request.stream:
            self.stats.streamed += 1
            await self._stream(request, send)
        else:
            await _respond(
                send, 200, encoder.encode(mock_content.completion(request, request.model))
            )

    async def _stream(self, request: ChatCompletionRequest, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        delay = self.settings.chunk_delay_ms / 1000
        for chunk in mock_content.chunks(request, request.model):
            payload = b"data: " + encoder.encode(chunk) + b"\n\n"
            await send({"type": "http.response.body", "body": payload, "more_body": True})
            if delay:
                await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def _simulated_error(status: int) -> BrokerError:
    kinds = {
        400: ("invalid_request_error", "invalid_request"),
        401: ("invalid_request_error", "invalid_api_key"),
        404: ("invalid_request_error", "model_not_found"),
        429: ("rate_limit_error", "rate_limit_exceeded"),
    }
    type_, code = kinds.get(status, ("server_error", "server_error"))
    return BrokerError(status, f"mock upstream simulated HTTP {status}", type=type_, code=code)


async def _read(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, error: BrokerError) -> None:
    await _respond(send, error.status, error.to_json())


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
