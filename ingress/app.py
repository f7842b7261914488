"""The OpenAI-compatible HTTP API.

Starlette because it is the thinnest stack with routing, streaming responses and a
lifespan hook (encode's style: plain functions, no dependency injection); uvicorn with
httptools and uvloop under it. The request path does no work the NATS client does not
already do: check Content-Type, read the body within the limit, validate it once with
msgspec, then hand the raw bytes to ``BrokerClient``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from nats.errors import Error as NatsError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from broker.batches.store import BatchStore
from broker.client import BrokerClient, Reply, ReplyStream
from broker.observability import metrics, tracing
from broker.tenancy.admission import Admission, bearer
from ingress.admin import admin_routes
from ingress.batches import batch_routes
from ingress.http_io import error_response, read_body, request_timeout, require_json
from ingress.openapi import openapi_json
from schemas.chat import (
    Model,
    ModelList,
    embedding_request_decoder,
    encoder,
)
from schemas.config import Config, ModelConfig
from schemas.depth import check_depth, decode_chat_request, decode_checked
from schemas.envelope import (
    H_AGE,
    H_CACHE,
    H_DEPLOYMENT,
    H_ERROR_SOURCE,
    H_FAILOVER_FROM,
    H_RETRY_AFTER,
    H_SHOULD_RETRY,
)
from schemas.errors import (
    BrokerError,
    error_class,
    internal_error,
    model_not_found,
    queue_unavailable,
)

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _reply_headers(reply: Reply) -> dict[str, str]:
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


_RELAYED = (
    (H_DEPLOYMENT, "x-promptbus-deployment"),
    (H_FAILOVER_FROM, "x-promptbus-failover-from"),
    (H_ERROR_SOURCE, "x-promptbus-error-source"),
    (H_SHOULD_RETRY, "x-should-retry"),
    (H_CACHE, "x-promptbus-cache"),
    (H_AGE, "age"),
)


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


def _request_id(request: Request) -> str:
    return request.headers.get("x-request-id") or uuid.uuid4().hex


def create_app(
    config: Config, client: BrokerClient | None = None, nats_url: str | None = None
) -> Starlette:
    """The ASGI app; it connects its own ``BrokerClient`` at start-up unless given one."""
    state: dict[str, BrokerClient] = {}
    admissions: dict[str, Admission] = {}
    batches: dict[str, BatchStore] = {}
    if client is not None:
        state["client"] = client

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owned = "client" not in state
        if owned:
            state["client"] = await BrokerClient.connect(config, nats_url, name="promptbus-ingress")
        admissions["admission"] = await Admission.open(state["client"].js, config)
        batches["store"] = await BatchStore.open(state["client"].js, config)
        try:
            yield
        finally:
            await admissions.pop("admission").close()
            if owned:
                await state.pop("client").close()

    def api_key(request: Request) -> str | None:
        headers = request.headers
        return bearer(headers.get("authorization")) or headers.get("api-key") or None

    async def chat_completions(request: Request) -> Response:
        """Metrics, trace context and the request log around the actual work."""
        started = time.perf_counter()
        trace = tracing.accept(request.headers.get("traceparent"))
        context = {"request_id": _request_id(request), "model": "", "stream": False}
        metrics.INGRESS_INFLIGHT.inc()
        try:
            response = await _chat(request, trace, context)
        except BrokerError as exc:
            response = error_response(exc)
            context["error"] = exc.detail.code
            metrics.ERRORS.labels("-", exc.detail.code or f"http_{exc.status}").inc()
        finally:
            metrics.INGRESS_INFLIGHT.dec()
        response.headers["x-request-id"] = str(context["request_id"])
        response.headers["traceparent"] = trace
        elapsed = time.perf_counter() - started
        model = str(context["model"]) if config.model(str(context["model"])) else "-"
        stream = "true" if context["stream"] else "false"
        metrics.INGRESS_REQUESTS.labels(model, str(response.status_code), stream).inc()
        metrics.INGRESS_DURATION.labels(model, stream).observe(elapsed)
        level = logging.WARNING if response.status_code >= 400 else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "chat completion",
                extra=context
                | {
                    "trace_id": tracing.trace_id(trace),
                    "status": response.status_code,
                    "latency_ms": round(elapsed * 1000, 3),
                    "deployment": response.headers.get("x-promptbus-deployment"),
                },
            )
        return response

    async def _chat(request: Request, trace: str, context: dict[str, Any]) -> Response:
        require_json(request)
        body = await read_body(request, state["client"].max_body_bytes)
        try:
            chat, unknown = decode_chat_request(body)
        except BrokerError:
            context["model"] = model_named_in(body)  # for the metrics of the refusal
            raise
        cacheable = None if unknown else chat  # the cache key knows only our fields
        context["model"], context["stream"] = chat.model, bool(chat.stream)
        broker = state["client"]
        request_id = str(context["request_id"])
        admission = admissions["admission"]
        grant = await admission.admit(api_key(request), chat.model, len(body) // 4)
        context["tenant"] = grant.tenancy.tenant
        options: dict[str, Any] = {
            "timeout": request_timeout(request),
            "request_id": request_id,
            "traceparent": tracing.child(trace),
            "tenancy": admission.vouch(request_id, grant),
        }
        limits = grant.rate_headers()
        cache_control = request.headers.get("cache-control")
        if chat.stream:
            stream = await broker.open_stream(
                chat.model, body, parsed=cacheable, cache_control=cache_control, **options
            )
            try:
                first = await stream.__anext__()  # errors before the first chunk get a status
            except StopAsyncIteration:
                first = None
            except BaseException:
                stream.close()
                raise
            headers = SSE_HEADERS | limits | ({} if first is None else _reply_headers(first))
            return StreamingResponse(
                _sse(first, stream), media_type="text/event-stream", headers=headers
            )
        reply = await broker.request(
            chat.model, body, parsed=cacheable, cache_control=cache_control, **options
        )
        return Response(
            reply.body,
            status_code=reply.status,
            media_type="application/json",
            headers=limits | _reply_headers(reply),
        )

    async def embeddings(request: Request) -> Response:
        """``POST /v1/embeddings``: validated here, queued on ``<prefix>.embed.<model>``."""
        trace = tracing.accept(request.headers.get("traceparent"))
        request_id = _request_id(request)
        model = "-"
        body = b""
        try:
            require_json(request)
            body = await read_body(request, state["client"].max_body_bytes)
            parsed = decode_checked(embedding_request_decoder, body)
            model = parsed.model if config.model(parsed.model) else "-"
            admission = admissions["admission"]  # the same keys, budgets and limits as chat
            grant = await admission.admit(api_key(request), parsed.model, len(body) // 4)
            reply = await state["client"].request(
                parsed.model,
                body,
                timeout=request_timeout(request),
                request_id=request_id,
                traceparent=tracing.child(trace),
                tenancy=admission.vouch(request_id, grant),
                mode="embeddings",
            )
            response = Response(
                reply.body,
                status_code=reply.status,
                media_type="application/json",
                headers=grant.rate_headers() | _reply_headers(reply),
            )
        except BrokerError as exc:
            response = error_response(exc)
            metrics.ERRORS.labels("-", exc.detail.code or f"http_{exc.status}").inc()
            if model == "-":
                named = model_named_in(body)
                model = named if config.model(named) else "-"
        response.headers["x-request-id"] = request_id
        response.headers["traceparent"] = trace
        metrics.INGRESS_REQUESTS.labels(model, str(response.status_code), "false").inc()
        return response

    async def metrics_endpoint(request: Request) -> Response:
        payload, content_type = metrics.exposition()
        return Response(payload, headers={"Content-Type": content_type})

    async def list_models(request: Request) -> Response:
        allowed = admissions["admission"].allowed_models(api_key(request))
        live = state["client"].directory.is_served

        def servable(model: ModelConfig) -> bool:  # by a worker of its own or a fallback's
            return live(model.model_name) or any(live(f) for f in model.fallbacks)

        models = ModelList(
            data=[
                Model(id=m.model_name, created=0, owned_by=m.owned_by)
                for m in config.model_list
                if (allowed is None or m.model_name in allowed) and servable(m)
            ]
        )
        return Response(encoder.encode(models), media_type="application/json")

    async def retrieve_model(request: Request) -> Response:
        name = request.path_params["model"]
        allowed = admissions["admission"].allowed_models(api_key(request))  # 401 first
        model = config.model(name)
        if model is None or (allowed is not None and name not in allowed):
            raise model_not_found(name)
        return Response(
            encoder.encode(Model(id=name, created=0, owned_by=model.owned_by)),
            media_type="application/json",
        )

    openapi = openapi_json()

    async def openapi_endpoint(request: Request) -> Response:
        return Response(openapi, media_type="application/json")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        broker = state.get("client")
        if broker is None or not broker.nc.is_connected:
            return JSONResponse({"status": "unavailable", "reason": "not connected to NATS"}, 503)
        try:
            await broker.js.stream_info(broker.subjects.stream)
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "reason": f"stream: {exc}"}, 503)
        return JSONResponse({"status": "ready", "stream": broker.subjects.stream})

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

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
            Route("/openapi.json", openapi_endpoint, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            *admin_routes(config, lambda: state["client"], lambda: admissions["admission"]),
            *batch_routes(
                config,
                lambda: batches["store"],
                lambda request: admissions["admission"].owner(api_key(request)),
            ),
        ],
        lifespan=lifespan,
        exception_handlers={
            BrokerError: on_broker_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
    )
    # No 307 to the path without its trailing slash: an API client does not follow
    # redirects of a POST or DELETE, and `/v1/files/%2F` is simply not found.
    app.router.redirect_slashes = False
    return app


async def _sse(first: Reply | None, stream: ReplyStream) -> AsyncIterator[bytes]:
    """Relay chunk replies as server-sent events; an error mid-stream becomes an error event."""
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
