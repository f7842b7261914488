"""``POST /v1/embeddings``: validated here, queued on ``<prefix>.embed.<model>``, with the
same keys, budgets and limits as chat, and observed as chat is (metrics, the request
log, the ingress's span)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ingress.http_io import read_body, reply_headers, require_json
from ingress.routes.chat import admitted, model_named_in, observed
from ingress.state import services
from schemas.chat import embedding_request_decoder
from schemas.depth import decode_checked
from schemas.errors import BrokerError


async def embeddings(request: Request) -> Response:
    return await observed(request, _embeddings, "embeddings")


async def _embeddings(request: Request, trace: str, context: dict[str, Any]) -> Response:
    broker = services(request).client
    require_json(request)
    body = await read_body(request, broker.max_body_bytes)
    try:
        parsed = decode_checked(embedding_request_decoder, body)
    except BrokerError:
        context["model"] = model_named_in(body)  # for the metrics of the refusal
        raise
    context["model"] = parsed.model
    grant, options = await admitted(request, trace, parsed, body, context)
    reply = await broker.request(parsed.model, body, mode="embeddings", **options)
    return Response(
        reply.body,
        status_code=reply.status,
        media_type="application/json",
        headers=grant.rate_headers() | reply_headers(reply),
    )
