"""``POST /v1/chat/completions``: validated once here, queued on the model's subject, the
reply relayed as JSON or as server-sent events."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import msgspec
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from broker.nats.subjects import Subjects
from broker.observability import metrics, otel, tracing
from broker.routing import capabilities
from broker.spend import records as spend_records
from broker.telemetry.counts import INGRESS
from broker.tenancy.admission import Grant
from ingress.http_io import (
    MIN_TIMEOUT_S,
    error_response,
    header,
    read_body,
    reply_headers,
    request_timeout,
    require_json,
)
from ingress.routes.streams import event_stream, first_of, relayed
from ingress.state import api_key, services
from schemas.chat import UnknownFields
from schemas.depth import check_depth, decode_chat_request, decode_checked
from schemas.envelope import new_request_id
from schemas.errors import BrokerError
from schemas.spend import SpendRecord

log = logging.getLogger(__name__)


class _ModelOnly(msgspec.Struct):
    model: str = ""


_model_decoder = msgspec.json.Decoder(_ModelOnly)


def model_named_in(body: bytes) -> str:
    """The ``model`` of a body that failed validation, if it has a readable one."""
    try:
        check_depth(body)
        return _model_decoder.decode(body).model
    except (BrokerError, msgspec.ValidationError, msgspec.DecodeError):
        return ""


class NamedModel(Protocol):
    model: str


class ModelRequest(NamedModel, Protocol):
    stream: bool | None


T = TypeVar("T", bound=ModelRequest)


async def read_model_request(
    request: Request, decoder: msgspec.json.Decoder[T], context: dict[str, Any]
) -> tuple[T, bytes]:
    """A model route's JSON body, decoded (and its raw bytes), for the APIs that refuse
    fields they do not define; see :func:`read_open_request`."""
    asked, _, body = await read_open_request(
        request, lambda raw: (decode_checked(decoder, raw), {}), context
    )
    return asked, body


async def read_open_request(
    request: Request,
    decode: Callable[[bytes], tuple[T, UnknownFields]],
    context: dict[str, Any],
) -> tuple[T, UnknownFields, bytes]:
    """A model route's JSON body, decoded with its unknown fields kept (chat, legacy
    completions), and its raw bytes; the model and stream flag go into the request
    log's ``context``, the model even for a body refused."""
    require_json(request)
    body = await read_body(request, services(request).client.max_body_bytes)
    try:
        asked, unknown = decode(body)
    except BrokerError:
        context["model"] = model_named_in(body)  # for the metrics of the refusal
        raise
    context["model"], context["stream"] = asked.model, bool(asked.stream)
    experiments = services(request).experiments
    if experiments is not None:
        experiment = experiments.experiment(asked.model)
        if experiment is not None:
            variant = experiments.route(experiment, sticky_id(request, asked, experiment.sticky))
            context["experiment"], context["variant"] = experiment.name, variant
            context["asked_as"], asked.model = asked.model, variant
            context["model"] = variant
    return asked, unknown, body


def end_user(request: Request, asked: object) -> str | None:
    """The end user a request names: ``x-promptbus-user``, else its ``user`` field (the
    Messages API's ``metadata.user_id``)."""
    named = header(request, "x-promptbus-user") or getattr(asked, "user", None)
    if named is None:
        metadata = getattr(asked, "metadata", None)
        named = getattr(metadata, "user_id", None)
    return named if isinstance(named, str) and named else None


def sticky_id(request: Request, asked: object, sticky: str) -> str | None:
    """What a sticky split hashes: the end user (else the key), or the key."""
    if sticky == "none":
        return None
    key = api_key(request) or header(request, "x-api-key")
    return (end_user(request, asked) if sticky == "user" else None) or key


async def admitted(
    request: Request,
    trace: str,
    asked: NamedModel,
    body: bytes,
    context: dict[str, Any],
    key: str | None = None,
) -> tuple[Grant, dict[str, Any]]:
    """Admission for a model request (its key, or ``key`` when the route reads it from
    elsewhere), and what every model route passes the broker client: the deadline, ids,
    trace, vouched tenancy and the caller's cache directives."""
    found = services(request)
    admission = found.admission
    timeout = request_timeout(request)
    wait_s = found.config.ingress.default_timeout_s if timeout is None else timeout
    grant = await admission.admit(
        key or api_key(request),
        asked.model,
        len(body) // 4,
        output_limit(asked),
        wait_s,
        lambda: client_gone(request),
        context.get("asked_as"),
        end_user(request, asked),
    )
    context["grant"] = grant
    context["tenant"] = grant.tenancy.tenant
    if grant.waited_s and timeout is not None:  # the wait for a slot counts
        timeout = max(MIN_TIMEOUT_S, timeout - grant.waited_s)
    options: dict[str, Any] = {
        "timeout": timeout,
        "request_id": str(context["request_id"]),
        "traceparent": context.get("hop") or tracing.child(trace),
        "tenancy": admission.vouch(grant),
        "cache_control": header(request, "cache-control"),
    }
    if "experiment" in context:
        options["experiment"] = context["experiment"]
    return grant, options


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    input_tokens: int = 0  # the Responses and Messages APIs' names
    output_tokens: int = 0


class _WithUsage(msgspec.Struct):
    usage: _Usage | None = None


_usage_decoder = msgspec.json.Decoder(_WithUsage)


def observe_variant(
    request: Request, response: Response, context: dict[str, Any], elapsed: float
) -> None:
    """An experiment's request in its counters (a stream's latency is to its first
    event, its tokens are not counted here); ``observed`` named the variant in the
    answer's headers."""
    experiments = services(request).experiments
    assert experiments is not None
    experiment, variant = str(context["experiment"]), str(context["variant"])
    prompt = completion = 0
    if not isinstance(response, StreamingResponse) and response.status_code < 300:
        try:
            usage = _usage_decoder.decode(response.body).usage
        except msgspec.DecodeError:
            usage = None
        if usage is not None:
            prompt = usage.prompt_tokens or usage.input_tokens
            completion = usage.completion_tokens or usage.output_tokens
    deployment = response.headers.get("x-promptbus-deployment")
    metrics.EXPERIMENT_REQUESTS.labels(experiment, variant, str(response.status_code)).inc()
    metrics.EXPERIMENT_DURATION.labels(experiment, variant).observe(elapsed)
    experiments.observe(
        experiment, variant, response.status_code, elapsed, deployment, prompt, completion
    )


def spend_cache_hit(
    request: Request, grant: Grant, context: dict[str, Any], elapsed: float
) -> None:
    """The spend record of an answer from the cache (no worker saw the request)."""
    found = services(request)
    if found.recorder is None or not found.config.spend_log.enabled:
        return
    tenancy = grant.tenancy
    entry = SpendRecord(
        at=time.time(),
        request_id=str(context["request_id"]),
        tenant=tenancy.tenant,
        key_id=tenancy.key_id,
        team=tenancy.team,
        user=tenancy.user,
        model=str(context["model"]),
        status=200,
        latency_ms=round(elapsed * 1000, 3),
        cache_hit=True,
        experiment=str(context.get("experiment", "")),
    )
    spend_records.record(found.recorder, Subjects.of(found.config), entry)


async def client_gone(request: Request) -> None:
    """Returns when the HTTP client has hung up (the body is read: the server's next
    message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def finish_with(grant: Grant, response: Response | None) -> None:
    """Free the request's concurrency slots when its response has been sent: a stream's
    once its last event is (or the client left), any other at once."""
    if not isinstance(response, StreamingResponse):
        grant.finish()
        return
    events = response.body_iterator

    async def finishing() -> AsyncIterator[Any]:
        try:
            async for event in events:
                yield event
        finally:
            grant.finish()

    response.body_iterator = finishing()
    # A stream the client left before it started never runs the generator: its slots
    # are freed when the response goes (Starlette then runs no background either).
    weakref.finalize(response, grant.finish)


def count_answer(
    request: Request, model: str, grant: Grant | None, status: int, elapsed: float
) -> None:
    """The answer in this ingress's telemetry (charts, alert rules): no I/O."""
    watch = services(request).watch
    if watch is not None and watch.telemetry is not None:
        tenant = grant.tenancy.tenant if grant is not None else ""
        watch.telemetry.observe(INGRESS, model, "", tenant, status, elapsed)


def record_ingress_span(
    request: Request,
    hop: str,
    incoming: str | None,
    started_ns: int,
    context: dict[str, Any],
    response: Response,
) -> None:
    """The ingress's span (OpenTelemetry on): from the request's arrival to its answer
    (a stream's first chunk), a child of the caller's span if it sent one."""
    otel.record_span(
        f"{request.method} {request.url.path}",
        hop,
        incoming.strip().lower() if tracing.valid(incoming) and incoming else None,
        started_ns,
        time.time_ns(),
        {
            "http.request.method": request.method,
            "url.path": request.url.path,
            "http.response.status_code": response.status_code,
            "model": str(context["model"]),
            "promptbus.request_id": str(context["request_id"]),
        },
        kind="server",
        error=str(context["error"]) if "error" in context else None,
    )


def output_limit(asked: NamedModel) -> int | None:
    """The most output tokens the request allows, whatever its API calls the field (a
    budget holds that much of its cost until the answer is known)."""
    for field in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = getattr(asked, field, None)
        if isinstance(value, int):
            return value
    return None


def request_id(request: Request) -> str:
    return header(request, "x-request-id") or new_request_id()


Work = Callable[[Request, str, dict[str, Any]], Awaitable[Response]]


async def chat_completions(request: Request) -> Response:
    return await observed(request, _chat)


async def observed(
    request: Request,
    work: Work,
    what: str = "chat completion",
    render_error: Callable[[BrokerError], Response] = error_response,
) -> Response:
    """Metrics, trace context and the request log around the actual work of a model
    request (``work(request, traceparent, context)``): chat, responses, messages."""
    config = services(request).config
    started, started_ns = time.perf_counter(), time.time_ns()
    incoming = header(request, "traceparent")
    trace = tracing.accept(incoming)
    # the ingress's own span: what it sends on (its id), a child of the caller's
    hop = tracing.child(trace)
    context: dict[str, Any] = {"request_id": request_id(request), "model": "", "stream": False}
    context["hop"] = hop
    metrics.INGRESS_INFLIGHT.inc()
    response: Response | None = None
    try:
        response = await work(request, trace, context)
    except BrokerError as exc:
        response = render_error(exc)
        context["error"] = exc.detail.code
        metrics.ERRORS.labels("-", exc.detail.code or f"http_{exc.status}").inc()
    finally:
        metrics.INGRESS_INFLIGHT.dec()
        grant: Grant | None = context.pop("grant", None)
        if grant is not None and grant.slots:
            finish_with(grant, response)
    if grant is not None and response.headers.get("x-promptbus-cache") == "hit":
        spend_cache_hit(request, grant, context, time.perf_counter() - started)
    response.headers["x-request-id"] = str(context["request_id"])
    response.headers["traceparent"] = trace
    if "variant" in context:
        response.headers["x-promptbus-experiment"] = str(context["experiment"])
        response.headers["x-promptbus-variant"] = str(context["variant"])
    elapsed = time.perf_counter() - started
    answered = response

    def bookkeeping() -> None:
        if "variant" in context:
            observe_variant(request, answered, context, elapsed)
        model = str(context["model"]) if config.model(str(context["model"])) else "-"
        stream = "true" if context["stream"] else "false"
        metrics.INGRESS_REQUESTS.labels(model, str(answered.status_code), stream).inc()
        metrics.INGRESS_DURATION.labels(model, stream).observe(elapsed)
        count_answer(request, model, grant, answered.status_code, elapsed)
        if otel.enabled():
            record_ingress_span(request, hop, incoming, started_ns, context, answered)
        level = logging.WARNING if answered.status_code >= 400 else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                what,
                extra=context
                | {
                    "trace_id": tracing.trace_id(trace),
                    "status": answered.status_code,
                    "latency_ms": round(elapsed * 1000, 3),
                    "deployment": answered.headers.get("x-promptbus-deployment"),
                },
            )

    after_sending(response, bookkeeping)
    return response


def after_sending(response: Response, bookkeeping: Callable[[], None]) -> None:
    """Run ``bookkeeping`` (metrics, telemetry, the request log) once a whole response
    has been sent, in the same turn of the event loop: ~40 µs at 400 req/s that the
    caller no longer waits for. A stream's runs now: Starlette runs no background for a
    stream its client left, and the request must be counted all the same."""
    if isinstance(response, StreamingResponse):
        bookkeeping()
        return
    response.background = _Bookkeeping(response, bookkeeping)


class _Bookkeeping(BackgroundTask):
    """A response's background that runs ``bookkeeping``, then what was there before.
    Built without ``BackgroundTask.__init__``, whose check of the callable costs more
    than the rest of it."""

    def __init__(self, response: Response, bookkeeping: Callable[[], None]) -> None:
        self._response = response
        self._bookkeeping = bookkeeping
        self._previous = response.background

    async def __call__(self) -> None:
        # The response holds this task and the task the response: broken here, so that
        # the answer is freed when it has gone, not by the cyclic collector (+22 µs a
        # request through the ingress, measured, when it was left to it).
        self._response.background = previous = self._previous
        self._bookkeeping()
        if previous is not None:
            await previous()


async def _chat(request: Request, trace: str, context: dict[str, Any]) -> Response:
    found = services(request)
    broker = found.client
    chat, unknown, body = await read_open_request(request, decode_chat_request, context)
    cacheable = None if unknown else chat  # the cache key knows only our fields
    model = found.config.model(chat.model)
    unable = capabilities.unable_for_chat(model, chat, len(body) // 4)
    grant, options = await admitted(request, trace, chat, body, context)
    if unable:
        options["unable"] = unable
    limits = grant.rate_headers()
    if chat.stream:
        stream = await broker.open_stream(chat.model, body, parsed=cacheable, **options)
        first = await first_of(stream)
        return event_stream(relayed(first, stream), first, limits)
    reply = await broker.request(chat.model, body, parsed=cacheable, **options)
    return Response(
        reply.body,
        status_code=reply.status,
        media_type="application/json",
        headers=limits | reply_headers(reply),
    )
