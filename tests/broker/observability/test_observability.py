"""Metrics after known traffic, trace context from HTTP to the upstream, and logs that
are structured and never carry a prompt or a key."""

from __future__ import annotations

import json
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from broker.observability import tracing
from tests.conftest import UPSTREAM_KEY, Stack


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(url).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def chat(stack: Stack, model: str, text: str, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(f"{stack.ingress}/v1/chat/completions", json=body, timeout=20)


def test_metrics_count_known_traffic(stack: Stack) -> None:
    ingress_before = samples(f"{stack.ingress}/metrics")
    worker_before = samples(stack.worker_metrics)
    for _ in range(7):
        assert chat(stack, "mock-gpt", "hello there").status_code == 200
    assert chat(stack, "upstream-gpt", "x", metadata={"mock_status": "429"}).status_code == 429
    assert chat(stack, "no-such-model", "x").status_code == 404
    ingress = samples(f"{stack.ingress}/metrics")
    worker = samples(stack.worker_metrics)

    def grew(after: dict, before: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"model": "mock-gpt", "status": "200", "stream": "false"}
    assert grew(ingress, ingress_before, "promptbus_ingress_requests_total", **ok) == 7
    limited = {"model": "upstream-gpt", "status": "429", "stream": "false"}
    assert grew(ingress, ingress_before, "promptbus_ingress_requests_total", **limited) == 1
    unknown = {"model": "-", "status": "404", "stream": "false"}  # no label per bad name
    assert grew(ingress, ingress_before, "promptbus_ingress_requests_total", **unknown) == 1
    duration = {"model": "mock-gpt", "stream": "false"}
    assert (
        grew(
            ingress, ingress_before, "promptbus_ingress_request_duration_seconds_count", **duration
        )
        == 7
    )

    served = {
        "model": "mock-gpt",
        "deployment": "mock-gpt/0",
        "status": "200",
        "lane": "interactive",
    }
    assert grew(worker, worker_before, "promptbus_worker_requests_total", **served) == 7
    out = {"deployment": "mock-gpt/0", "direction": "output"}
    assert grew(worker, worker_before, "promptbus_tokens_total", **out) == 7 * 5
    assert (
        grew(
            worker,
            worker_before,
            "promptbus_queue_wait_seconds_count",
            model="mock-gpt",
            lane="interactive",
        )
        == 7
    )
    upstream = {"deployment": "mock-gpt/0", "stream": "false"}
    assert (
        grew(worker, worker_before, "promptbus_upstream_request_duration_seconds_count", **upstream)
        == 7
    )
    rate_limited = {"deployment": "fake-openai", "code": "upstream_rate_limited"}
    assert grew(worker, worker_before, "promptbus_errors_total", **rate_limited) == 1
    assert value(worker, "promptbus_breaker_state", deployment="fake-openai") == 0
    assert value(worker, "promptbus_worker_inflight_requests", deployment="mock-gpt/0") == 0


def test_queue_depth_metric(stack: Stack) -> None:
    deadline = time.monotonic() + 8  # polled every 5 s
    names: set[str] = set()
    while time.monotonic() < deadline and not names:
        names = {
            dict(labels)["queue"]
            for (name, labels) in samples(stack.worker_metrics)
            if name == "promptbus_queued_requests"
        }
        time.sleep(0.5)
    assert any(name.startswith("chat_mock-gpt") for name in names)


def test_trace_context_reaches_the_upstream_and_comes_back(stack: Stack) -> None:
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = httpx.post(
        f"{stack.ingress}/v1/chat/completions",
        json={"model": "upstream-gpt", "messages": [{"role": "user", "content": "trace me"}]},
        headers={"traceparent": incoming},
    )
    assert response.status_code == 200
    assert response.headers["traceparent"] == incoming
    seen = stack.upstream_traceparent()
    assert tracing.trace_id(seen) == "0af7651916cd43dd8448eb211c80319c"
    assert seen != incoming  # a span of its own for the upstream call


def test_trace_context_is_minted_when_absent_or_invalid(stack: Stack) -> None:
    for header in ({}, {"traceparent": "garbage"}):
        response = httpx.post(
            f"{stack.ingress}/v1/chat/completions",
            json={"model": "upstream-gpt", "messages": [{"role": "user", "content": "x"}]},
            headers=header,
        )
        minted = response.headers["traceparent"]
        assert tracing.valid(minted)
        assert tracing.trace_id(stack.upstream_traceparent()) == tracing.trace_id(minted)
    errored = chat(stack, "nope", "x")
    assert tracing.valid(errored.headers["traceparent"]) and errored.headers["x-request-id"]


def test_logs_are_json_and_never_carry_prompts_or_keys(stack: Stack) -> None:
    canary = "PROMPT-CANARY-4242"
    assert chat(stack, "upstream-gpt", canary).status_code == 200
    failed = chat(stack, "upstream-gpt", canary, metadata={"mock_status": "500"})
    assert failed.status_code == 500
    request_id = failed.headers["x-request-id"]
    time.sleep(0.3)
    lines = []
    for name in ("ingress.log", "worker.log", "upstream.log"):
        lines += (stack.workdir / name).read_text(errors="replace").splitlines()
    assert lines
    assert not [line for line in lines if canary in line]
    assert not [line for line in lines if UPSTREAM_KEY in line]
    ingress_lines = (stack.workdir / "ingress.log").read_text().splitlines()
    # a line still being written by another request's log call is not complete yet
    complete = [line for line in ingress_lines if line.startswith("{") and line.endswith("}")]
    records = [json.loads(line) for line in complete]
    [logged] = [r for r in records if r.get("request_id") == request_id]
    assert logged["status"] == 500 and logged["model"] == "upstream-gpt"
    assert logged["trace_id"] == tracing.trace_id(failed.headers["traceparent"])
    assert logged["level"] == "warning" and logged["latency_ms"] > 0


def test_status_command_prints_every_deployment(stack: Stack) -> None:
    import subprocess

    from tests.procs import PROMPTBUS, ROOT

    done = subprocess.run(
        [*PROMPTBUS, "status", "-c", str(stack.config_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "DEPLOYMENT", "WORKERS"]
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    assert rows["mock-gpt/0"][0] == "mock-gpt" and rows["mock-gpt/0"][2] == "1"
    assert rows["mock-gpt/0"][-1] == "closed"
    assert rows["orphan/0"][2] == "0"  # configured, but no worker serves it


def test_cost_and_cache_metrics(stack: Stack) -> None:
    ingress_before = samples(f"{stack.ingress}/metrics")
    worker_before = samples(stack.worker_metrics)
    text = f"hello there {time.time_ns()}"  # 3 prompt tokens, 6 completion tokens
    for _ in range(2):
        assert chat(stack, "upstream-gpt", text, temperature=0).status_code == 200
    ingress = samples(f"{stack.ingress}/metrics")
    worker = samples(stack.worker_metrics)
    cost = {"model": "upstream-gpt", "deployment": "fake-openai"}
    spent = value(worker, "promptbus_cost_usd_total", **cost) - value(
        worker_before, "promptbus_cost_usd_total", **cost
    )
    assert spent == 3 * 1 + 6 * 2  # one upstream call: the second was a cache hit
    for result in ("hit", "miss"):
        labels = {"model": "upstream-gpt", "result": result}
        grown = value(ingress, "promptbus_cache_requests_total", **labels) - value(
            ingress_before, "promptbus_cache_requests_total", **labels
        )
        assert grown == 1


def test_refusals_are_counted_with_the_model_they_named(stack: Stack) -> None:
    """A request refused at the door (400 here) counts in promptbus_errors_total, and
    under the model it asked for when that model exists."""
    before = samples(f"{stack.ingress}/metrics")
    assert chat(stack, "mock-gpt", "x", temperature=9).status_code == 400
    assert chat(stack, "no-such-model", "x").status_code == 404
    after = samples(f"{stack.ingress}/metrics")

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    refused = {"model": "mock-gpt", "status": "400", "stream": "false"}
    assert grew("promptbus_ingress_requests_total", **refused) == 1
    assert grew("promptbus_errors_total", deployment="-", code="invalid_value") == 1
    assert grew("promptbus_errors_total", deployment="-", code="model_not_found") == 1
