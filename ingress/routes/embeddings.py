"""``POST /v1/embeddings``: validated here, queued on ``<prefix>.embed.<model>``, with the
same keys, budgets and limits as chat."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from broker.observability import metrics, tracing
from broker.tenancy.admission import Grant
from ingress.http_io import error_response, header, read_body, reply_headers, require_json
from ingress.routes.chat import admitted, count_answer, model_named_in, request_id
from ingress.state import services
from schemas.chat import embedding_request_decoder
from schemas.depth import decode_checked
from schemas.errors import BrokerError


async def embeddings(request: Request) -> Response:
    found = services(request)
    started = time.perf_counter()
    config, broker = found.config, found.client
    trace = tracing.accept(header(request, "traceparent"))
    rid = request_id(request)
    model = "-"
    body = b""
    grant: Grant | None = None
    try:
        require_json(request)
        body = await read_body(request, broker.max_body_bytes)
        parsed = decode_checked(embedding_request_decoder, body)
        model = parsed.model if config.model(parsed.model) else "-"
        context: dict[str, Any] = {"request_id": rid}
        grant, options = await admitted(request, trace, parsed, body, context)
        reply = await broker.request(parsed.model, body, mode="embeddings", **options)
        response = Response(
            reply.body,
            status_code=reply.status,
            media_type="application/json",
            headers=grant.rate_headers() | reply_headers(reply),
        )
    except BrokerError as exc:
        response = error_response(exc)
        metrics.ERRORS.labels("-", exc.detail.code or f"http_{exc.status}").inc()
        if model == "-":
            named = model_named_in(body)
            model = named if config.model(named) else "-"
    finally:
        if grant is not None:
            grant.finish()
    response.headers["x-request-id"] = rid
    response.headers["traceparent"] = trace
    metrics.INGRESS_REQUESTS.labels(model, str(response.status_code), "false").inc()
    count_answer(request, model, grant, response.status_code, time.perf_counter() - started)
    return response
