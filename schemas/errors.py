"""OpenAI-style error bodies and the exceptions that carry one through the broker.

Every failure, whether raised in the ingress, the client or a worker, is a
``BrokerError``: an HTTP status plus the ``{"error": {...}}`` body OpenAI clients parse.
Its class says what kind of failure it is, so callers test types, not code strings
(``except CircuitOpen``); an error rebuilt from a reply (``BrokerError.from_json``) gets
the same class it was raised as:

    BrokerError
    ├── InvalidRequest            the request is at fault: fix it, do not retry (400, 409, 415)
    │   ├── NotFound              no such model, batch, file, key or route (404)
    │   └── RequestTooLarge       over a size limit at the door (413)
    ├── AuthenticationError       no key, or an unknown one (401)
    ├── PermissionDenied          the key may not do this (403)
    ├── RateLimited               a rate limit, budget or quota of a key or tenant (429)
    ├── Unavailable               the broker cannot take it now; retry (503)
    │   ├── NoWorker              no live worker serves the model
    │   └── CircuitOpen           the deployment's breaker is open
    ├── DeadlineExceeded          the request's deadline passed (504)
    ├── UpstreamError             the provider failed or refused (its status, or 502)
    │   ├── DeploymentFault       the deployment's credentials or quota: another may serve
    │   └── ContextLengthExceeded the prompt does not fit this model's context window
    └── InternalError             a bug of ours, or a request that kills workers (500)
"""

from __future__ import annotations

import re

import msgspec
from msgspec import Struct


class ErrorDetail(Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(Struct):
    error: ErrorDetail


error_decoder = msgspec.json.Decoder(ErrorResponse)
_encoder = msgspec.json.Encoder()


class BrokerError(Exception):
    """A failure with the status and OpenAI error body a client should see."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)
        self.retryable = retryable  # would the same request succeed later?
        self.retry_after = retry_after  # seconds to wait first, when known
        self.headers: dict[str, str] = {}  # extra HTTP headers, e.g. x-ratelimit-*

    @property
    def message(self) -> str:
        return self.detail.message

    def to_json(self) -> bytes:
        return _encoder.encode(ErrorResponse(error=self.detail))

    @classmethod
    def from_json(
        cls, status: int, body: bytes, *, retryable: bool = False, retry_after: float | None = None
    ) -> BrokerError:
        """Rebuild an error from a reply body; a body that is not one is itself reported."""
        try:
            detail = error_decoder.decode(body).error
        except msgspec.DecodeError:
            return UpstreamError(
                502,
                f"malformed error reply (status {status}): {body[:200]!r}",
                type="api_error",
                code="bad_reply",
            )
        kind = error_class(status, detail.type, detail.code) if cls is BrokerError else cls
        return kind(
            status,
            detail.message,
            type=detail.type,
            code=detail.code,
            param=detail.param,
            retryable=retryable,
            retry_after=retry_after,
        )

    def __repr__(self) -> str:
        kind = type(self).__name__
        return f"{kind}({self.status}, {self.detail.type}/{self.detail.code}: {self.message})"


class InvalidRequest(BrokerError):
    """The request is at fault; the same request will fail again."""


class NotFound(InvalidRequest):
    """No such model, batch, file, key, deployment or route."""


class RequestTooLarge(InvalidRequest):
    """A body or a part of one over a limit enforced at the door."""


class AuthenticationError(BrokerError):
    """No API key, or one the broker does not know (or revoked)."""


class PermissionDenied(BrokerError):
    """A valid key that may not do this (a model it is not allowed, the admin API)."""


class RateLimited(BrokerError):
    """A key's or tenant's rate limit, budget or token quota refused the request."""


class Unavailable(BrokerError):
    """The broker cannot take the request now (queue full or unreachable); retry."""


class NoWorker(Unavailable):
    """No live worker serves the model (or every one said why it cannot)."""


class CircuitOpen(Unavailable):
    """The deployment is failing and its breaker keeps requests away until a probe."""


class DeadlineExceeded(BrokerError):
    """The request's deadline passed before an answer."""


class UpstreamError(BrokerError):
    """The provider failed or refused; ``status`` is the provider's (or 502)."""


class DeploymentFault(UpstreamError):
    """A failure of the deployment, not the request (its credentials or quota): it
    counts against the deployment's breaker, and another deployment may serve."""


class ContextLengthExceeded(UpstreamError):
    """The prompt does not fit this model's context window (a larger one may take it)."""


class InternalError(BrokerError):
    """A bug of ours (details in the log), or a request that ended its worker each time."""


# The class of an error, from what its body says (codes first, then type and status).
_BY_CODE: dict[str, type[BrokerError]] = {
    "circuit_open": CircuitOpen,
    "no_worker_available": NoWorker,
    "upstream_auth_failed": DeploymentFault,
    "upstream_quota_exceeded": DeploymentFault,
    "context_length_exceeded": ContextLengthExceeded,
    "request_too_large": RequestTooLarge,
    "bad_reply": UpstreamError,
}
_BY_STATUS: dict[int, type[BrokerError]] = {
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    413: RequestTooLarge,
    429: RateLimited,
    503: Unavailable,
    504: DeadlineExceeded,
}


def error_class(status: int, type: str | None, code: str | None) -> type[BrokerError]:
    """The ``BrokerError`` subclass an error body with this status, type and code is."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    if type == "upstream_error":
        return UpstreamError
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if 400 <= status < 500:
        return InvalidRequest
    return InternalError if status == 500 else BrokerError


# ---------------------------------------------------------------- constructors


def invalid_request(
    message: str, *, param: str | None = None, code: str | None = None
) -> BrokerError:
    return InvalidRequest(400, message, param=param, code=code)


def model_not_found(model: str) -> BrokerError:
    return NotFound(
        404,
        f"The model `{model}` does not exist or is not served by this broker.",
        code="model_not_found",
        param="model",
    )


def wrong_endpoint(model: str, mode: str) -> BrokerError:
    """A chat request for an embeddings model, or the other way round."""
    endpoint = "/v1/embeddings" if mode == "embeddings" else "/v1/chat/completions"
    return InvalidRequest(
        400,
        f"The model `{model}` serves {mode}: send its requests to {endpoint}.",
        code="wrong_endpoint",
        param="model",
    )


def no_worker(model: str, reason: str | None = None) -> BrokerError:
    """``reason``: what the workers asked to serve the model said stops them."""
    advice = (
        f"a worker cannot serve it: {reason}"
        if reason
        else "start a worker pool for it (`promptbus worker`) or try again later"
    )
    return NoWorker(
        503,
        f"No worker is currently serving model `{model}`; {advice}.",
        type="service_unavailable_error",
        code="no_worker_available",
        retryable=True,
    )


def no_capacity() -> BrokerError:
    return Unavailable(
        503,
        "The broker's request queue is full (nats.max_queued_requests); retry after a short wait.",
        type="service_unavailable_error",
        code="no_capacity",
        retryable=True,
        retry_after=1.0,
    )


_NATS_LIMIT = "ingress.max_body_bytes, bounded by the NATS server's max_payload"


def request_too_large(
    limit: int, what: str = "Request body", why: str = _NATS_LIMIT
) -> BrokerError:
    """A body over its limit: by default one NATS cannot carry (``max_payload`` less the
    headers)."""
    return RequestTooLarge(
        413, f"{what} exceeds the {limit} byte limit ({why}).", code="request_too_large"
    )


def response_too_large(limit: int) -> BrokerError:
    """An answer over the reply limit: said to the caller instead of never arriving."""
    return UpstreamError(
        502,
        f"The upstream's answer exceeds the {limit} byte reply limit "
        "(worker.max_reply_bytes); ask for less (fewer inputs, lower max_tokens).",
        type="upstream_error",
        code="response_too_large",
    )


def poison_request(deliveries: int) -> BrokerError:
    """A request whose handling ended the worker (crash or hang) on every delivery."""
    return InternalError(
        500,
        f"The request was taken by a worker {deliveries} times and never answered (it "
        "crashed or stalled the worker each time); it was moved to the dead-letter subject "
        "and will not run again.",
        type="api_error",
        code="poison_request",
    )


def no_text_completions(model: str, provider: str | None = None) -> BrokerError:
    """A legacy ``/v1/completions`` request for a model (or a deployment's provider)
    whose API has no text completions."""
    why = (
        f"its provider ({provider}) has no text completions API"
        if provider
        else "none of its deployments has a text completions API"
    )
    return InvalidRequest(
        400,
        f"The model `{model}` cannot serve /v1/completions: {why}. Send the prompt to "
        "/v1/chat/completions as a user message.",
        param="model",
        code="unsupported_endpoint",
    )


def unknown_field(name: str, provider: str) -> BrokerError:
    """A field promptbus does not define, for a native provider that could not take it."""
    return InvalidRequest(
        400,
        f"Unknown parameter `{name}`: the model's provider ({provider}) has no such field. "
        "Unknown fields are forwarded only to OpenAI-compatible upstreams.",
        param=name,
        code="unsupported_parameter",
    )


def internal_error(exc: BaseException) -> BrokerError:
    """A bug of ours, said as such (the details are in the log, not the answer)."""
    return InternalError(
        500, f"internal error: {type(exc).__name__}", type="api_error", code="internal_error"
    )


def queue_unavailable(reason: str) -> BrokerError:
    return Unavailable(
        503,
        f"The request queue is unavailable ({reason}); try again shortly.",
        type="service_unavailable_error",
        code="queue_unavailable",
        retryable=True,
    )


def deadline_exceeded(seconds: float, where: str) -> BrokerError:
    return DeadlineExceeded(
        504,
        f"Request deadline of {seconds:.3g}s passed {where}; retry with a longer timeout "
        "or when the service is less busy.",
        type="timeout_error",
        code="deadline_exceeded",
        retryable=True,
    )


def circuit_open(deployment: str, retry_after: float) -> BrokerError:
    return CircuitOpen(
        503,
        f"Deployment `{deployment}` is failing and its circuit breaker is open; "
        f"it will be probed again in {retry_after:.0f}s.",
        type="service_unavailable_error",
        code="circuit_open",
        retryable=True,
        retry_after=retry_after,
    )


def upstream_error(
    status: int,
    deployment: str,
    message: str,
    *,
    code: str | None = None,
    retryable: bool | None = None,
    retry_after: float | None = None,
    param: str | None = None,
) -> BrokerError:
    """An error the provider returned or caused; the message names the deployment, and
    ``param`` the request parameter the provider found at fault, when it said.

    Unless told otherwise, timeouts, conflicts, rate limits and 5xx are retryable
    and other 4xx (the request itself is at fault) are not.
    """
    if retryable is None:
        retryable = status in RETRYABLE_STATUSES or status >= 500
    kind = _BY_CODE.get(code or "", UpstreamError)
    if not issubclass(kind, UpstreamError):
        kind = UpstreamError
    return kind(
        status,
        f"Upstream deployment `{deployment}` failed: {message}",
        type="upstream_error",
        code=code or f"upstream_{status}",
        retryable=retryable,
        retry_after=retry_after,
        param=param,
    )


RETRYABLE_STATUSES = frozenset({408, 409, 429})


_PATH = re.compile(r" - at (?:`key` in )?`\$(?P<path>[^`]*)`$")  # a dict key: its dict
_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")


def from_validation_error(exc: msgspec.ValidationError | msgspec.DecodeError) -> BrokerError:
    """Turn a msgspec error into a 400 whose ``param`` names the offending field.

    msgspec reports e.g. ``Expected `float` <= 2.0, got 3.0 - at `$.temperature```;
    the path becomes ``param="temperature"`` as OpenAI would report it.
    """
    text = str(exc)
    match = _PATH.search(text)
    if isinstance(exc, msgspec.ValidationError):
        param = None
        if match:
            param = match.group("path").lstrip(".") or None
            text = text[: match.start()]
        missing = _MISSING.search(text)
        if missing:  # the field itself, not the object that lacks it
            field = missing.group("field")
            param = f"{param}.{field}" if param else field
        return invalid_request(
            f"Invalid request: {text}" + (f" (at `{param}`)" if param else ""),
            param=param,
            code="invalid_value" if param else "invalid_request",
        )
    return invalid_request(f"Request body is not valid JSON: {text}", code="invalid_json")
