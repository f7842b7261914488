"""Every failure as an OpenAI-style JSON error: ours (``BrokerError``), Starlette's (404,
405 with ``Allow``), NATS answering late (503, retryable) and bugs (500, said as such)."""

from __future__ import annotations

import logging

from nats.errors import Error as NatsError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ingress.http_io import error_response
from schemas.errors import BrokerError, error_class, internal_error, queue_unavailable

log = logging.getLogger(__name__)


async def on_broker_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BrokerError)
    return error_response(exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    response = error_response(
        error_class(exc.status_code, None, code)(
            exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code
        )
    )
    if exc.headers:  # 405: Allow names the methods the route takes
        response.headers.update(exc.headers)
    return response


async def on_unexpected(request: Request, exc: Exception) -> Response:
    if isinstance(exc, NatsError):  # NATS answered late or not at all (leader election)
        log.warning("NATS error on %s: %s", request.url.path, exc)
        return error_response(queue_unavailable(f"NATS: {exc}"))
    log.exception("unhandled error on %s", request.url.path)
    return error_response(internal_error(exc))


HANDLERS = {
    BrokerError: on_broker_error,
    HTTPException: on_http_error,
    Exception: on_unexpected,
}
