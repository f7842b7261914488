"""``POST /v1/completions``: legacy text completions (vLLM, evaluation harnesses),
queued with the model's chat requests (one queue, one concurrency limit per deployment)
and tagged ``Pb-Api: completions``; served by deployments whose upstream has the API
(``schemas/completions.py``), refused with a 400 for a model none of whose has."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ingress.http_io import reply_headers
from ingress.routes.chat import admitted, observed, read_open_request
from ingress.routes.streams import event_stream, first_of, relayed
from ingress.state import services
from schemas.completions import decode_completion_request, speaks_text_completions
from schemas.envelope import TEXT_COMPLETIONS
from schemas.errors import no_text_completions


async def completions(request: Request) -> Response:
    return await observed(request, _complete, "text completion")


async def _complete(request: Request, trace: str, context: dict[str, Any]) -> Response:
    found = services(request)
    broker = found.client
    asked, unknown, body = await read_open_request(request, decode_completion_request, context)
    model = found.config.model(asked.model)
    if model is not None and model.mode == "chat" and not speaks_text_completions(model):
        raise no_text_completions(asked.model)
    grant, options = await admitted(request, trace, asked, body, context)
    options["mode"] = TEXT_COMPLETIONS
    limits = grant.rate_headers()
    if asked.stream:
        stream = await broker.open_stream(asked.model, body, **options)
        first = await first_of(stream)
        return event_stream(relayed(first, stream), first, limits)
    parsed = None if unknown else asked  # the cache key knows only the defined fields
    reply = await broker.request(asked.model, body, parsed=parsed, **options)
    return Response(
        reply.body,
        status_code=reply.status,
        media_type="application/json",
        headers=limits | reply_headers(reply),
    )
