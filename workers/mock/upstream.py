"""``promptbus mock-upstream``: a fake OpenAI-compatible HTTP server.

It speaks the real wire format (JSON and SSE, OpenAI error bodies), validates requests
with the same schema as the broker, and misbehaves on command, for tests and benchmarks:

- start-up flags / ``POST /_control`` JSON: ``latency_ms``, ``error_rate`` (0..1),
  ``error_status``, ``retry_after_s`` (sent with errors), ``fail_next`` (the next N
  requests fail), ``hang`` (accept and never answer), ``drop_after_chunks`` (cut the
  connection mid-stream), ``chunk_delay_ms``, ``api_key`` (require a bearer key);
- per request, through the OpenAI ``metadata`` field: ``mock_status`` (answer with that
  HTTP error), ``mock_latency_ms``, ``mock_retry_after``;
- ``POST /v1/completions`` serves legacy text completions too (without directives);
- ``POST /v1/responses`` serves the Responses API, streamed (typed events) or not, as
  OpenAI does (``responses_api: native`` deployments); ``/_stats`` shows the last body;
- ``GET /_stats`` returns how many model requests arrived (``POST /_reset`` zeroes it).

Plain ASGI, no framework, so that as a benchmark baseline it costs next to nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

import msgspec

from broker.responses.chat_turn import ChatTurn
from schemas.chat import (
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    Model,
    ModelList,
    UnknownFields,
    decode_with_unknown_fields,
    encoder,
)
from schemas.completions import request_fields as text_request_fields
from schemas.errors import (
    AuthenticationError,
    BrokerError,
    NotFound,
    error_class,
    from_validation_error,
    invalid_request,
)
from schemas.responses import ResponseRequest, event_head_decoder, response_request_decoder
from workers.mock import content as mock_content

T = TypeVar("T")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

embedding_request_decoder = msgspec.json.Decoder(EmbeddingRequest)
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class MockSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    latency_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    retry_after_s: float | None = None
    fail_next: int = 0
    hang: bool = False
    drop_after_chunks: int | None = None
    chunk_delay_ms: float = 0.0
    api_key: str | None = None


class Stats(msgspec.Struct):
    requests: int = 0
    streamed: int = 0
    streams_abandoned: int = 0  # the client hung up before the last chunk
    errors: int = 0
    last_traceparent: str | None = None
    # Top-level fields of the last chat request that the OpenAI schema does not define,
    # as received (what a vLLM would read: top_k, repetition_penalty...).
    last_unknown_fields: dict[str, Any] = msgspec.field(default_factory=dict)
    responses: int = 0  # POST /v1/responses requests
    last_responses_request: dict[str, Any] | None = None  # the last one's body


class _Upstream:
    """One virtual upstream: its own settings and counters."""

    def __init__(self, settings: MockSettings) -> None:
        self.settings = settings
        self.stats = Stats()


class MockUpstream:
    """The ASGI application.

    ``/v1/...`` is the default upstream; ``/u/<name>/v1/...`` are independent virtual
    upstreams (each with its own ``/_control``, ``/_stats``, ``/_reset``), so one process
    can play every provider a test needs.
    """

    def __init__(self, settings: MockSettings | None = None) -> None:
        self._defaults = settings or MockSettings()
        self._upstreams: dict[str, _Upstream] = {}

    def upstream(self, name: str = "") -> _Upstream:
        if name not in self._upstreams:
            self._upstreams[name] = _Upstream(msgspec.structs.replace(self._defaults))
        return self._upstreams[name]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        path, method = scope["path"], scope["method"]
        name = ""
        if path.startswith("/u/"):
            name, _, rest = path[3:].partition("/")
            path = "/" + rest
        upstream = self.upstream(name)
        if path in ("/v1/chat/completions", "/chat/completions") and method == "POST":
            await self._chat(upstream, scope, receive, send)
        elif path in ("/v1/completions", "/completions") and method == "POST":
            await self._text(upstream, scope, receive, send)
        elif path in ("/v1/responses", "/responses") and method == "POST":
            await self._responses(upstream, scope, receive, send)
        elif path in ("/v1/embeddings", "/embeddings") and method == "POST":
            await self._embeddings(upstream, receive, send)
        elif path in ("/v1/models", "/models") and method == "GET":
            body = ModelList(data=[Model(id="mock", created=0, owned_by="mock-upstream")])
            await _respond(send, 200, encoder.encode(body))
        elif path == "/_stats":
            await _respond(send, 200, encoder.encode(upstream.stats))
        elif path == "/_reset" and method == "POST":
            upstream.stats = Stats()
            upstream.settings = msgspec.structs.replace(self._defaults)
            await _respond(send, 200, b"{}")
        elif path == "/_control" and method == "POST":
            await self._control(upstream, receive, send)
        else:
            await _error(send, NotFound(404, f"no route {method} {path}", code="not_found"))

    async def _control(self, upstream: _Upstream, receive: Receive, send: Send) -> None:
        try:
            changes = msgspec.json.decode(await _read(receive))
            merged = msgspec.structs.asdict(upstream.settings) | changes
            upstream.settings = msgspec.convert(merged, MockSettings)
        except (msgspec.ValidationError, msgspec.DecodeError, TypeError) as exc:
            await _error(send, invalid_request(f"bad control body: {exc}"))
            return
        await _respond(send, 200, encoder.encode(upstream.settings))

    async def _embeddings(self, upstream: _Upstream, receive: Receive, send: Send) -> None:
        upstream.stats.requests += 1
        try:
            request = embedding_request_decoder.decode(await _read(receive))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            await _error(send, from_validation_error(exc))
            return
        texts = [request.input] if isinstance(request.input, str) else request.input
        dimensions = request.dimensions or mock_content.EMBEDDING_DIMENSIONS
        tokens = sum(len(t.split()) for t in texts)
        body = EmbeddingList(
            data=[
                Embedding(index=i, embedding=mock_content.embedding(t, dimensions))
                for i, t in enumerate(texts)
            ],
            model=request.model,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
        await _respond(send, 200, encoder.encode(body))

    async def _chat(self, upstream: _Upstream, scope: Scope, receive: Receive, send: Send) -> None:
        request = await self._request(upstream, scope, receive, send, decode_with_unknown_fields)
        if request is None or not await self._behave(upstream, request.metadata or {}, send):
            return
        if request.stream:
            chunks = [encoder.encode(c) for c in mock_content.chunks(request, request.model)]
            await self._stream(upstream, _data_frames(chunks), receive, send)
        else:
            answer = mock_content.completion(request, request.model)
            await _respond(send, 200, encoder.encode(answer))

    async def _responses(
        self, upstream: _Upstream, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """The Responses API, answered with the mock's chat content (translated by the
        broker's own ``ChatTurn``): typed ``event:`` frames and no ``[DONE]``, as OpenAI."""

        def decode(body: bytes) -> tuple[ResponseRequest, UnknownFields]:
            request = response_request_decoder.decode(body)
            upstream.stats.last_responses_request = msgspec.json.decode(body)
            return request, {}

        upstream.stats.responses += 1
        request = await self._request(upstream, scope, receive, send, decode)
        if request is None or not await self._behave(upstream, request.metadata or {}, send):
            return
        try:
            turn = ChatTurn(msgspec.structs.replace(request, previous_response_id=None))
        except BrokerError as exc:
            await _error(send, exc)
            return
        model = request.model
        if request.stream:
            events = turn.start()
            for chunk in mock_content.chunks(turn.chat, model):
                events += turn.chunk(encoder.encode(chunk))
            events += turn.finish()
            await self._stream(upstream, _event_frames(events), receive, send, done=False)
        else:
            answer = encoder.encode(mock_content.completion(turn.chat, model))
            await _respond(send, 200, turn.body(answer))

    async def _text(self, upstream: _Upstream, scope: Scope, receive: Receive, send: Send) -> None:
        """Legacy text completions, as vLLM and OpenAI serve them."""
        decode = text_request_fields.decode
        request = await self._request(upstream, scope, receive, send, decode)
        if request is None or not await self._behave(upstream, {}, send):
            return
        if request.stream:
            chunks = [encoder.encode(c) for c in mock_content.text_chunks(request, request.model)]
            await self._stream(upstream, _data_frames(chunks), receive, send)
        else:
            answer = mock_content.text_completion(request, request.model)
            await _respond(send, 200, encoder.encode(answer))

    async def _request(
        self,
        upstream: _Upstream,
        scope: Scope,
        receive: Receive,
        send: Send,
        decode: Callable[[bytes], tuple[T, UnknownFields]],
    ) -> T | None:
        """The authorized, decoded request, its unknown fields recorded in the stats;
        None once a 401 or a 400 was sent."""
        body = await self._authorized_body(upstream, scope, receive, send)
        if body is None:
            return None
        try:
            request, unknown = decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            upstream.stats.errors += 1
            await _error(send, from_validation_error(exc))
            return None
        upstream.stats.last_unknown_fields = {k: msgspec.json.decode(v) for k, v in unknown.items()}
        return request

    async def _authorized_body(
        self, upstream: _Upstream, scope: Scope, receive: Receive, send: Send
    ) -> bytes | None:
        """The request body, counted; None once a wrong API key was answered with 401."""
        stats = upstream.stats
        stats.requests += 1
        stats.last_traceparent = dict(scope["headers"]).get(b"traceparent", b"").decode() or None
        body = await _read(receive)
        expected = upstream.settings.api_key
        if expected is not None:
            auth = dict(scope["headers"]).get(b"authorization", b"").decode()
            if auth != f"Bearer {expected}":
                stats.errors += 1
                await _error(
                    send,
                    AuthenticationError(401, "Incorrect API key provided.", code="invalid_api_key"),
                )
                return None
        return body

    async def _behave(self, upstream: _Upstream, directives: dict[str, str], send: Send) -> bool:
        """Hang, wait and fail as the settings and the request's directives say; False
        once a simulated error was sent."""
        settings = upstream.settings
        if settings.hang:
            await asyncio.sleep(3600)
        latency = float(directives.get("mock_latency_ms", settings.latency_ms))
        if latency:
            await asyncio.sleep(latency / 1000)
        status = int(directives.get("mock_status", 0))
        if not status and settings.fail_next > 0:
            settings.fail_next -= 1
            status = settings.error_status
        if not status and settings.error_rate and random.random() < settings.error_rate:
            status = settings.error_status
        if status:
            upstream.stats.errors += 1
            retry_after = directives.get("mock_retry_after", settings.retry_after_s)
            error = _simulated_error(status, directives.get("mock_error_code"))
            await _error(send, error, retry_after)
            return False
        return True

    async def _stream(
        self,
        upstream: _Upstream,
        frames: list[bytes],
        receive: Receive,
        send: Send,
        *,
        done: bool = True,
    ) -> None:
        """Send server-sent event frames, then ``[DONE]`` (chat) unless ``done`` is
        False (Responses); a client hanging up first is counted."""
        settings = upstream.settings
        upstream.stats.streamed += 1
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        delay = settings.chunk_delay_ms / 1000
        drop_after = settings.drop_after_chunks
        hung_up = asyncio.ensure_future(receive())  # the body is read: next is the disconnect
        try:
            for sent, frame in enumerate(frames):
                if drop_after is not None and sent >= drop_after:
                    raise ConnectionAbortedError("mock upstream drops the connection mid-stream")
                if hung_up.done():
                    upstream.stats.streams_abandoned += 1
                    return
                await send({"type": "http.response.body", "body": frame, "more_body": True})
                if delay:
                    await asyncio.sleep(delay)
            last = b"data: [DONE]\n\n" if done else b""
            await send({"type": "http.response.body", "body": last})
        finally:
            hung_up.cancel()


def _data_frames(chunks: list[bytes]) -> list[bytes]:
    return [b"data: " + chunk + b"\n\n" for chunk in chunks]


def _event_frames(events: list[bytes]) -> list[bytes]:
    """Typed events as OpenAI frames them: ``event: <type>`` before each ``data:``."""
    return [
        b"event: " + event_head_decoder.decode(e).type.encode() + b"\ndata: " + e + b"\n\n"
        for e in events
    ]


def _simulated_error(status: int, code: str | None = None) -> BrokerError:
    kinds = {
        400: ("invalid_request_error", "invalid_request"),
        401: ("invalid_request_error", "invalid_api_key"),
        404: ("invalid_request_error", "model_not_found"),
        429: ("rate_limit_error", "rate_limit_exceeded"),
    }
    type_, default_code = kinds.get(status, ("server_error", "server_error"))
    code = code or default_code
    return error_class(status, type_, code)(
        status, f"mock upstream simulated HTTP {status}", type=type_, code=code
    )


async def _read(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, error: BrokerError, retry_after: object = None) -> None:
    extra = [(b"retry-after", str(retry_after).encode())] if retry_after is not None else []
    await _respond(send, error.status, error.to_json(), extra)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
