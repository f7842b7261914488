"""``POST /v1/embeddings``: validated here, queued on ``<prefix>.embed.<model>``, with the
same keys, budgets and limits as chat."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from broker.observability import metrics, tracing
from ingress.http_io import error_response, read_body, reply_headers, request_timeout, require_json
from ingress.routes.chat import model_named_in, request_id
from ingress.state import api_key, services
from schemas.chat import embedding_request_decoder
from schemas.depth import decode_checked
from schemas.errors import BrokerError


async def embeddings(request: Request) -> Response:
    found = services(request)
    config, broker, admission = found.config, found.client, found.admission
    trace = tracing.accept(request.headers.get("traceparent"))
    rid = request_id(request)
    model = "-"
    body = b""
    try:
        require_json(request)
        body = await read_body(request, broker.max_body_bytes)
        parsed = decode_checked(embedding_request_decoder, body)
        model = parsed.model if config.model(parsed.model) else "-"
        grant = await admission.admit(api_key(request), parsed.model, len(body) // 4)
        reply = await broker.request(
            parsed.model,
            body,
            timeout=request_timeout(request),
            request_id=rid,
            traceparent=tracing.child(trace),
            tenancy=admission.vouch(grant),
            mode="embeddings",
        )
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
    response.headers["x-request-id"] = rid
    response.headers["traceparent"] = trace
    metrics.INGRESS_REQUESTS.labels(model, str(response.status_code), "false").inc()
    return response
