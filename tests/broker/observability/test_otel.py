"""OpenTelemetry export (``otel.enabled``) from real ingress and worker processes to an
in-process OTLP receiver: one trace per request, a span per hop (ingress, queue wait,
worker, upstream attempt), parented as the traceparent headers are; and the metrics."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import yaml

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from broker.nats.embedded import free_port
from tests import bus
from tests.fakes.otlp import OtlpReceiver
from tests.procs import PROMPTBUS, Proc, eventually, wait_http

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str
) -> Iterator[tuple[OtlpReceiver, str]]:
    receiver = OtlpReceiver().start()
    work = tmp_path_factory.mktemp("otel")
    config = work / "promptbus.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "nats": {
                    "url": nats_url,
                    "subject_prefix": "ot",
                    "stream": "OT_REQ",
                    **bus.config_section(),
                },
                "otel": {"enabled": True, "endpoint": receiver.url, "export_every_s": 0.5},
                "model_list": [
                    {
                        "model_name": "otel-gpt",
                        "deployments": [{"provider": "mock", "name": "otel-dep"}],
                    },
                    {
                        "model_name": "otel-embed",
                        "mode": "embeddings",
                        "deployments": [{"provider": "mock", "name": "otel-embed-dep"}],
                    },
                ],
            }
        )
    )
    port = free_port()
    procs = [Proc([*PROMPTBUS, "worker", "-c", str(config)], work / "worker.log")]
    try:
        procs.append(
            Proc([*PROMPTBUS, "ingress", "-c", str(config), "--port", str(port)], work / "i.log")
        )
        wait_http(f"http://127.0.0.1:{port}/readyz", procs[1])
        yield receiver, f"http://127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            proc.stop()
        receiver.stop()


def _attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attribute in span.attributes:
        value = attribute.value
        out[attribute.key] = value.string_value or value.int_value
    return out


def _spans_once_answered(
    exported: tuple[OtlpReceiver, str],
    call: Callable[[openai.OpenAI, dict[str, str]], object],
    trace_id: str,
    wanted: set[str],
) -> dict[str, Any]:
    """Repeat ``call`` (given a client and the caller's ``traceparent`` header) until the
    worker answers it, then wait for ``wanted`` spans of the answered trace, returned by
    name. Each try has its own trace (``trace_id``'s tail numbered), so the spans of a try
    the worker was not ready for never mix with the answered one's."""
    receiver, base = exported
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    tries = itertools.count()
    answered_trace: list[str] = []

    def answered() -> bool:
        trace = f"{trace_id[:-4]}{next(tries):04x}"
        try:
            call(client, {"traceparent": f"00-{trace}-{CALLER_SPAN}-01"})
        except openai.APIStatusError:
            return False  # the worker is not serving yet
        answered_trace.append(trace)
        return True

    eventually(answered, "the worker answers", timeout=20)

    def hops() -> dict[str, Any] | None:
        spans = {s.name: s for s in receiver.spans_of(answered_trace[0])}
        return spans if wanted <= set(spans) else None

    result: dict[str, Any] = eventually(hops, f"the spans {sorted(wanted)}", timeout=20)
    return result


def test_one_trace_has_a_span_per_hop(exported: tuple[OtlpReceiver, str]) -> None:
    receiver = exported[0]
    spans = _spans_once_answered(
        exported,
        lambda client, traceparent: client.chat.completions.create(
            model="otel-gpt",
            messages=[{"role": "user", "content": "trace me"}],
            extra_headers=traceparent,
        ),
        TRACE_ID,
        {"POST /v1/chat/completions", "queue wait", "worker otel-dep", "upstream otel-dep"},
    )
    ingress = spans["POST /v1/chat/completions"]
    worker, wait, attempt = (
        spans["worker otel-dep"],
        spans["queue wait"],
        spans["upstream otel-dep"],
    )
    assert ingress.parent_span_id.hex() == CALLER_SPAN  # the caller's span is its parent
    assert wait.parent_span_id == ingress.span_id and worker.parent_span_id == ingress.span_id
    assert attempt.parent_span_id == worker.span_id
    assert ingress.start_time_unix_nano <= wait.start_time_unix_nano
    assert wait.end_time_unix_nano <= worker.start_time_unix_nano + 1_000_000
    assert worker.start_time_unix_nano <= attempt.start_time_unix_nano
    assert attempt.end_time_unix_nano <= worker.end_time_unix_nano
    assert _attributes(ingress)["http.response.status_code"] == 200
    assert _attributes(worker)["deployment"] == "otel-dep"
    assert _attributes(attempt)["promptbus.attempt"] == 1
    roles = {r.get("promptbus.role") for r in receiver.resources}
    assert {"ingress", "worker"} <= roles

    def counted() -> set[str] | None:
        names = {m.name for m in receiver.metrics}
        return names if {"promptbus.requests", "promptbus.request.duration"} <= names else None

    assert "promptbus.queue.wait" in eventually(counted, "the metrics are exported", timeout=20)


EMBED_TRACE_ID = "5cf92f3577b34da6a3ce929d0e0e4737"


def test_an_embeddings_request_has_its_ingress_span(exported: tuple[OtlpReceiver, str]) -> None:
    spans = _spans_once_answered(
        exported,
        lambda client, traceparent: client.embeddings.create(
            model="otel-embed", input="trace me", extra_headers=traceparent
        ),
        EMBED_TRACE_ID,
        {"POST /v1/embeddings", "worker otel-embed-dep"},
    )
    ingress, worker = spans["POST /v1/embeddings"], spans["worker otel-embed-dep"]
    assert ingress.parent_span_id.hex() == CALLER_SPAN
    assert worker.parent_span_id == ingress.span_id
    assert _attributes(ingress)["http.response.status_code"] == 200
    assert _attributes(ingress)["model"] == "otel-embed"


def test_export_is_off_by_default() -> None:
    from broker.observability import otel
    from schemas.config import OtelConfig

    assert not OtelConfig().enabled
    assert not otel.enabled()  # this process never started it
    otel.record_span("x", f"00-{TRACE_ID}-{CALLER_SPAN}-01", None, 0, 1)  # a no-op
    assert not otel.enabled() and not otel._providers and not otel._instruments
