"""``POST /v1/messages``: Anthropic's Messages API, for Anthropic-native clients (the
anthropic SDK, Claude Code), served by any deployment as the chat request it means
(``broker/messages/translation.py``). Errors come in Anthropic's shape; the key may come
as ``x-api-key``, as the anthropic SDK sends it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from broker.client import Reply, ReplyStream
from broker.messages import translation
from broker.routing import capabilities
from ingress.http_io import header, reply_headers
from ingress.routes.chat import admitted, observed, read_model_request
from ingress.routes.streams import Event, event_stream, first_of, translated
from ingress.state import services
from schemas.chat import completion_decoder, encoder, with_fields
from schemas.errors import BrokerError
from schemas.messages import messages_request_decoder


def error_response(exc: BrokerError) -> Response:
    headers = exc.headers | {"x-should-retry": "true" if exc.retryable else "false"}
    if exc.retry_after is not None:
        headers["retry-after"] = str(max(1, round(exc.retry_after)))
    body = encoder.encode(translation.anthropic_error(exc))
    return Response(body, status_code=exc.status, media_type="application/json", headers=headers)


async def create_message(request: Request) -> Response:
    return await observed(request, _create, "message", error_response)


async def _create(request: Request, trace: str, context: dict[str, Any]) -> Response:
    found = services(request)
    broker = found.client
    asked, body = await read_model_request(request, messages_request_decoder, context)
    key = header(request, "x-api-key")
    grant, options = await admitted(request, trace, asked, body, context, key)
    chat = translation.to_chat(asked)
    unable = capabilities.unable_for_chat(found.config.model(asked.model), chat, len(body) // 4)
    if unable:
        options["unable"] = unable
    extra = translation.extra_fields(asked)
    chat_body = with_fields(encoder.encode(chat), extra)
    options["parsed"] = None if extra else chat  # the cache key knows only chat's fields
    limits = grant.rate_headers()
    if chat.stream:
        stream = await broker.open_stream(asked.model, chat_body, **options)
        first = await first_of(stream)
        return event_stream(_events(asked.model, first, stream), first, limits)
    reply = await broker.request(asked.model, chat_body, **options)
    reply.raise_for_error()
    message = translation.to_message(completion_decoder.decode(reply.body))
    return Response(
        encoder.encode(message),
        media_type="application/json",
        headers=limits | reply_headers(reply),
    )


def _events(model: str, first: Reply | None, stream: ReplyStream) -> AsyncIterator[bytes]:
    """Chat chunks as Anthropic's stream events; a failure is an ``error`` event."""
    events = translation.MessageEvents(model)

    async def closing() -> list[Event]:
        return events.finish()

    def failed(exc: BrokerError) -> list[Event]:
        return [msgspec.to_builtins(translation.anthropic_error(exc))]

    return translated(first, stream, events.start(), events.chunk, closing, failed)
