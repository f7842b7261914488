"""Server-sent events of model replies, for every route that streams: the first reply
awaited before the response starts (so errors before it still get a status), and the
chunks relayed as they are (chat) or turned into another API's typed events
(responses, messages)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import StreamingResponse

from broker.client import Reply, ReplyStream
from ingress.http_io import reply_headers
from schemas.chat import ChatCompletionChunk, chunk_decoder, encoder
from schemas.errors import BrokerError

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
Event = dict[str, Any]


async def first_of(stream: ReplyStream) -> Reply | None:
    """The stream's first reply (None for an empty stream); an error before it raises
    here, while the HTTP status can still say it."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None
    except BaseException:
        stream.close()
        raise


def event_stream(
    events: AsyncIterator[bytes], first: Reply | None, limits: dict[str, str]
) -> StreamingResponse:
    headers = SSE_HEADERS | limits | ({} if first is None else reply_headers(first))
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def typed_event(event: Event) -> bytes:
    """``event: <type>`` and its JSON, as OpenAI's and Anthropic's streams send them."""
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + encoder.encode(event) + b"\n\n"


async def translated(
    first: Reply | None,
    stream: ReplyStream,
    opening: list[Event],
    chunk: Callable[[ChatCompletionChunk], list[Event]],
    closing: Callable[[], Awaitable[list[Event]]],
    failed: Callable[[BrokerError], list[Event]],
) -> AsyncIterator[bytes]:
    """Chat chunks as another API's events: ``opening``, each chunk's, ``closing``'s;
    a failure on the way becomes ``failed``'s events."""
    try:
        for event in opening:
            yield typed_event(event)
        if first is not None:
            for event in chunk(chunk_decoder.decode(first.body)):
                yield typed_event(event)
            async for reply in stream:
                for event in chunk(chunk_decoder.decode(reply.body)):
                    yield typed_event(event)
        for event in await closing():
            yield typed_event(event)
    except BrokerError as exc:
        for event in failed(exc):
            yield typed_event(event)
    finally:
        stream.close()


async def relayed(first: Reply | None, stream: ReplyStream) -> AsyncIterator[bytes]:
    """Chunk replies relayed as server-sent events, as chat and legacy completions
    stream; an error mid-stream becomes an error event."""
    try:
        if first is not None:
            yield b"data: " + first.body + b"\n\n"
            async for reply in stream:
                yield b"data: " + reply.body + b"\n\n"
        yield b"data: [DONE]\n\n"
    except BrokerError as exc:
        yield b"data: " + exc.to_json() + b"\n\n"
    finally:
        stream.close()
