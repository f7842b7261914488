"""OpenTelemetry export (``pip install promptbus[otel]``, ``otel.enabled``): traces and
metrics over OTLP/HTTP through the official SDK. Off by default; with it off, or the
extra not installed, every call here is one ``if``.

Spans are recorded when a hop ends, with the ids the W3C ``traceparent`` headers
already carry (broker/observability/tracing.py): the ingress's span is the one whose id
it sends on NATS, a worker's span and the queue wait are its children, and each
upstream attempt is a child of the worker's span with the id the provider was sent. So
one trace ties the caller, the ingress, the queue, the worker and every attempt
together, and the request path gains no context objects. An id generator hands the SDK
those ids (it would otherwise make new ones).
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
from typing import Any

from schemas.config import OtelConfig

log = logging.getLogger(__name__)

# set while a span is started: the ids it must have (trace id, span id), from traceparent
_PRESET: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "promptbus_otel_preset", default=None
)
_tracer: Any = None  # an opentelemetry Tracer while export is on
_instruments: dict[str, Any] = {}
_providers: list[Any] = []


def enabled() -> bool:
    return _tracer is not None


def start(config: OtelConfig, role: str) -> bool:
    """Install the SDK's tracer and meter providers for this process (``role``: ingress,
    worker); False, with a log line saying why, when the extra is missing."""
    global _tracer
    if not config.enabled or _tracer is not None:
        return _tracer is not None
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import IdGenerator
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
    except ImportError as exc:
        log.error(
            "otel.enabled, but the OpenTelemetry SDK is missing (%s): "
            "pip install 'promptbus[otel]'",
            exc,
        )
        return False

    class PresetIds(IdGenerator):
        """The ids the traceparent headers carry, when a span is started for them."""

        def generate_span_id(self) -> int:
            preset = _PRESET.get()
            return preset[1] if preset is not None else random.getrandbits(64)

        def generate_trace_id(self) -> int:
            preset = _PRESET.get()
            return preset[0] if preset is not None else random.getrandbits(128)

    headers = _headers(config)
    base = config.endpoint.rstrip("/")
    resource = Resource.create(
        {
            "service.name": config.service_name,
            "service.instance.id": f"{role}-{os.getpid()}",
            "promptbus.role": role,
        }
    )
    tracer_provider = TracerProvider(
        resource=resource, id_generator=PresetIds(), sampler=TraceIdRatioBased(config.sample_ratio)
    )
    tracer_provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{base}/v1/traces", headers=headers),
            schedule_delay_millis=int(config.export_every_s * 1000),
        )
    )
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{base}/v1/metrics", headers=headers),
        export_interval_millis=int(config.export_every_s * 1000),
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = meter_provider.get_meter("promptbus")
    _instruments.update(
        requests=meter.create_counter("promptbus.requests", "{request}", "Requests answered"),
        duration=meter.create_histogram("promptbus.request.duration", "s", "Time to answer"),
        wait=meter.create_histogram("promptbus.queue.wait", "s", "Time queued in JetStream"),
        tokens=meter.create_counter("promptbus.tokens", "{token}", "Tokens used"),
        cost=meter.create_counter("promptbus.cost", "USD", "Spend at the deployments' prices"),
    )
    _providers[:] = [tracer_provider, meter_provider]
    _tracer = tracer_provider.get_tracer("promptbus")
    log.info("OpenTelemetry export to %s (%s)", base, role)
    return True


def shutdown() -> None:
    """Flush what is buffered (on a process's way out)."""
    global _tracer
    for provider in _providers:
        try:
            provider.shutdown()
        except Exception as exc:
            log.warning("OpenTelemetry shutdown: %s", exc)
    _providers.clear()
    _instruments.clear()
    _tracer = None


def _headers(config: OtelConfig) -> dict[str, str]:
    """``k=v,k2=v2`` from the variable ``headers_env`` names (an API key is a secret)."""
    raw = os.environ.get(config.headers_env or "", "")
    pairs = (item.split("=", 1) for item in raw.split(",") if "=" in item)
    return {k.strip(): v.strip() for k, v in pairs}


def _ids(traceparent: str) -> tuple[int, int, int]:
    _, trace_id, span_id, flags = traceparent.split("-")
    return int(trace_id, 16), int(span_id, 16), int(flags, 16)


def record_span(
    name: str,
    traceparent: str,
    parent: str | None,
    start_ns: int,
    end_ns: int,
    attributes: dict[str, Any] | None = None,
    *,
    kind: str = "internal",
    error: str | None = None,
) -> None:
    """A finished span with the ids of ``traceparent``, a child of ``parent``'s span
    (None: a root of that trace)."""
    tracer = _tracer
    if tracer is None:
        return
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode

    trace_id, span_id, _ = _ids(traceparent)
    context = None
    if parent is not None:
        p_trace, p_span, p_flags = _ids(parent)
        remote = SpanContext(p_trace, p_span, is_remote=True, trace_flags=trace.TraceFlags(p_flags))
        context = trace.set_span_in_context(NonRecordingSpan(remote))
    token = _PRESET.set((trace_id, span_id))
    try:
        span = tracer.start_span(
            name,
            context=context,
            kind=getattr(SpanKind, kind.upper()),
            start_time=start_ns,
            attributes=attributes,
        )
    finally:
        _PRESET.reset(token)
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end_ns)


def record_request(
    source: str,
    model: str,
    deployment: str,
    status: int,
    seconds: float | None,
    wait_s: float | None,
    tokens: int,
    cost_usd: float,
) -> None:
    """The OTLP metrics of one answered request (what Telemetry counts, as instruments)."""
    if not _instruments:
        return
    attributes = {
        "promptbus.source": "ingress" if source == "i" else "worker",
        "model": model,
        "status": status,
    }
    if deployment:
        attributes["deployment"] = deployment
    _instruments["requests"].add(1, attributes)
    if seconds is not None:
        _instruments["duration"].record(seconds, attributes)
    if wait_s is not None:
        _instruments["wait"].record(wait_s, {"model": model})
    if tokens:
        _instruments["tokens"].add(tokens, {"model": model, "deployment": deployment})
    if cost_usd:
        _instruments["cost"].add(cost_usd, {"model": model, "deployment": deployment})
