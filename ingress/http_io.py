"""Reading request bodies within a size limit, mapping errors to JSON responses, and the
reply headers every model route passes on."""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import Response

from broker.client import Reply
from schemas.envelope import (
    H_AGE,
    H_CACHE,
    H_DEPLOYMENT,
    H_ERROR_SOURCE,
    H_FAILOVER_FROM,
    H_RETRY_AFTER,
    H_SHOULD_RETRY,
)
from schemas.errors import BrokerError, InvalidRequest, request_too_large


def error_response(error: BrokerError) -> Response:
    """The OpenAI error body, with the retry verdict as headers the openai SDK honours."""
    headers = error.headers | {"x-should-retry": "true" if error.retryable else "false"}
    if error.retry_after is not None:
        headers["retry-after"] = str(math.ceil(error.retry_after))
    return Response(
        error.to_json(), status_code=error.status, media_type="application/json", headers=headers
    )


def header(request: Request, name: str) -> str | None:
    """A request header (the first of that name; ``name`` in lower case), from a dict
    built once per request: Starlette's ``headers.get`` scans the header list on every
    call and raises a KeyError inside for each absent one, and a model request asks
    for a dozen headers, most of them absent."""
    scope = request.scope
    found: dict[bytes, bytes] | None = scope.get("promptbus.headers")
    if found is None:
        found = scope["promptbus.headers"] = dict(reversed(scope["headers"]))
    value = found.get(name.encode("latin-1"))
    return None if value is None else value.decode("latin-1")


def require_json(request: Request) -> None:
    content_type = header(request, "content-type") or ""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise InvalidRequest(
            415,
            f"Content-Type must be application/json, got `{content_type or '(none)'}`.",
            code="unsupported_media_type",
        )


async def read_body(request: Request, limit: int, why: str | None = None) -> bytes:
    """The whole body, refusing early (413) once it exceeds ``limit`` bytes; ``why``
    names the limit when it is not the NATS one."""
    declared = header(request, "content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit, why)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, why)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int, why: str | None) -> BrokerError:
    return request_too_large(limit, why=why) if why else request_too_large(limit)


MIN_TIMEOUT_S = 0.05


def request_timeout(request: Request) -> float | None:
    """The client's own timeout, if it sent one: ours, or the one the OpenAI SDK sends."""
    for name in ("x-promptbus-timeout", "x-stainless-timeout"):
        value = header(request, name)
        if value is None:
            continue
        try:
            seconds = float(value)
        except ValueError:
            if name == "x-stainless-timeout":
                # the SDKs' own header, not the caller's word: some versions send
                # `NOT_GIVEN` when no timeout is set; that means none
                continue
            seconds = -1.0
        if not seconds >= MIN_TIMEOUT_S or seconds == float("inf"):
            raise InvalidRequest(
                400,
                f"Header {name} must be a number of seconds of at least {MIN_TIMEOUT_S} "
                f"(the time a request needs to reach a worker and come back), got `{value}`.",
                param=name,
                code="invalid_header",
            )
        return seconds
    return None


_RELAYED = (
    (H_DEPLOYMENT, "x-promptbus-deployment"),
    (H_FAILOVER_FROM, "x-promptbus-failover-from"),
    (H_ERROR_SOURCE, "x-promptbus-error-source"),
    (H_SHOULD_RETRY, "x-should-retry"),
    (H_CACHE, "x-promptbus-cache"),
    (H_AGE, "age"),
)


def reply_headers(reply: Reply) -> dict[str, str]:
    """NATS reply headers as HTTP response headers (the openai SDK reads the retry ones)."""
    headers: dict[str, str] = {}
    for nats_name, http_name in _RELAYED:
        value = reply.headers.get(nats_name)
        if value:
            headers[http_name] = value
    retry_after = reply.headers.get(H_RETRY_AFTER)
    if retry_after:
        headers["retry-after"] = str(math.ceil(float(retry_after)))
    return headers


def page_limit(request: Request, default: int = 20, most: int = 100) -> int:
    """The ``limit`` query parameter of a list route: 1 to ``most``, else a 400."""
    text = request.query_params.get("limit", str(default))
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise InvalidRequest(
            400, f"limit must be an integer from 1 to {most}.", param="limit", code="invalid_value"
        )
    return int(text)
