"""Every route of /openapi.json fuzzed with auth on: no 5xx, only documented answers.

Operations come from the ingress's own document (so a route added there is fuzzed
without a change here): path parameters from hostile strings, bodies drawn from the
operation's schema (valid, or broken in one way), arbitrary JSON, JSON nested around
the depth limit, and bodies around the size limit; with a valid key, a wrong one, the
admin key or none. Every answer must be a status the document lists for the operation,
with a body that decodes as the documented schema (the OpenAI error body for errors).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.nats.embedded import free_port
from ingress.openapi import _TYPES
from schemas.depth import MAX_JSON_DEPTH
from tests import bus
from tests.procs import PROMPTBUS, Proc, wait_http
from tests.reliability.conftest import short_and_long
from tests.reliability.schema_strategy import JSON, SchemaStrategies

ADMIN = "fuzz-admin-secret"
MODELS = ["mock-gpt", "mock-embed", "no-such-model"]
PARAMS = st.sampled_from(
    ["x", "mock-gpt/0", "mock-gpt%2F0", "..", "%2e%2e", "a" * 300, "file-abc", "batch_1", "é", " "]
) | st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=20)
TYPES = {t.__name__: t for t in _TYPES}


class Fuzzed:
    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.key = key


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, nats_url: str) -> Iterator[Fuzzed]:
    work: Path = tmp_path_factory.mktemp("fuzz-routes")
    config = work / "promptbus.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "nats": {
                    "url": nats_url,
                    "subject_prefix": "fz",
                    "stream": "FZ_REQ",
                    **bus.config_section(),
                },
                "auth": {"required": True},
                "worker": {"heartbeat_s": 0.5, "presence_ttl_s": 3},
                "model_list": [
                    {"model_name": "mock-gpt", "deployments": [{"provider": "mock"}]},
                    {
                        "model_name": "mock-embed",
                        "mode": "embeddings",
                        "deployments": [{"provider": "mock"}],
                    },
                ],
            }
        )
    )
    port = free_port()
    env = {"PROMPTBUS_ADMIN_KEY": ADMIN}
    procs = [
        Proc([*PROMPTBUS, "worker", "-c", str(config)], work / "worker.log"),
        Proc([*PROMPTBUS, "batcher", "-c", str(config)], work / "batcher.log"),
        Proc(
            [*PROMPTBUS, "ingress", "-c", str(config), "--port", str(port)],
            work / "ingress.log",
            env,
        ),
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz", procs[2])
        created = httpx.post(
            f"{base}/admin/keys",
            json={"tenant": "fuzz"},
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        key = created.json()["key"]
        deadline = time.monotonic() + 30
        while True:  # until the worker serves
            ok = httpx.post(
                f"{base}/v1/chat/completions",
                json={"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )
            if ok.status_code == 200:
                break
            assert time.monotonic() < deadline, ok.text
            time.sleep(0.1)
        yield Fuzzed(base, key)
    finally:
        for proc in reversed(procs):
            proc.stop()


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def cases(document: dict[str, Any], body_limit: int, key: str) -> st.SearchStrategy[Any]:
    schemas = SchemaStrategies(document["components"]["schemas"], MODELS)
    near_limit = st.sampled_from([body_limit - 200, body_limit + 1, body_limit + 70_000])

    def for_operation(op: tuple[str, str, dict[str, Any]]) -> st.SearchStrategy[Any]:
        _, _, operation = op
        content = operation.get("requestBody", {}).get("content", {})
        schema = content.get("application/json", {}).get("schema", {})
        ref = schema.get("$ref", "").rsplit("/", 1)[-1]
        bodies: st.SearchStrategy[Any] = JSON.map(msgspec.json.encode)
        if ref:
            bodies = (
                schemas.body(ref).map(msgspec.json.encode)
                | schemas.body(ref).map(msgspec.json.encode)
                | st.sampled_from([MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 1, 5000]).map(
                    lambda n: b'{"model":"mock-gpt","tools":' + b"[" * n + b"1" + b"]" * n + b"}"
                )
                | near_limit.map(
                    lambda n: (
                        b'{"model":"mock-gpt","messages":[{"role":"user","content":"'
                        + b"x" * n
                        + b'"}]}'
                    )
                )
                | bodies
            )
        names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
        params = st.fixed_dictionaries({n: PARAMS for n in names})
        auth = st.sampled_from([f"Bearer {key}", f"Bearer {ADMIN}", "Bearer sk-pb-nope", ""])
        content_type = st.sampled_from(["application/json"] * 6 + ["text/plain"])
        return st.tuples(
            st.just(op), params, bodies if content else st.just(b""), auth, content_type
        )

    return st.sampled_from(_operations(document)).flatmap(for_operation)


def _documented_schema(operation: dict[str, Any], status: int) -> tuple[bool, str | None]:
    """Is ``status`` documented for the operation, and the JSON schema name of its body."""
    responses = operation["responses"]
    entry = responses.get(str(status))
    if entry is None:
        return False, None
    schema = entry.get("content", {}).get("application/json", {}).get("schema", {})
    return True, schema.get("$ref", "").rsplit("/", 1)[-1] or None


_RESPONSE_ENDS = {"response.completed", "response.incomplete", "response.failed"}


def _response_events_problem(events: list[bytes]) -> str | None:
    """A Responses stream: typed events, numbered in order, ending with the response."""
    try:
        decoded = [msgspec.json.decode(e) for e in events]
    except msgspec.DecodeError as exc:
        return f"event is not JSON: {exc}"
    if not decoded or decoded[0].get("type") != "response.created":
        return "stream does not open with response.created"
    if decoded[-1].get("type") not in _RESPONSE_ENDS:
        return "stream without its end"
    if [e.get("sequence_number") for e in decoded] != list(range(len(decoded))):
        return "sequence numbers out of order"
    try:
        msgspec.convert(decoded[-1]["response"], TYPES["Response"])
    except (msgspec.ValidationError, KeyError) as exc:
        return f"the last event's response is not a Response: {exc}"
    return None


_MESSAGE_EVENTS = {
    "message_start",
    "ping",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
}


def _message_events_problem(events: list[bytes]) -> str | None:
    """An Anthropic stream: message_start ... message_stop, or an error event last."""
    try:
        kinds = [msgspec.json.decode(e).get("type") for e in events]
    except msgspec.DecodeError as exc:
        return f"event is not JSON: {exc}"
    if not kinds or kinds[0] != "message_start":
        return "stream does not open with message_start"
    if kinds[-1] not in ("message_stop", "error"):
        return "stream without its end"
    if not set(kinds[:-1]) <= _MESSAGE_EVENTS:
        return f"unknown events: {set(kinds) - _MESSAGE_EVENTS}"
    return None


def _sse_problem(content: bytes, path: str) -> str | None:
    """A chat (or legacy completions) stream must be chunk events, an error event at
    most, then ``[DONE]``."""
    events = [line[6:] for line in content.split(b"\n") if line.startswith(b"data: ")]
    if path == "/v1/responses":
        return _response_events_problem(events)
    if path == "/v1/messages":
        return _message_events_problem(events)
    if not events or (events[-1] != b"[DONE]" and b'"error"' not in events[-1]):
        return "stream without its end"
    chunk = "TextCompletion" if path == "/v1/completions" else "ChatCompletionChunk"
    for event in events[:-1]:
        try:
            msgspec.json.decode(event, type=TYPES[chunk])
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return f"event is not a {chunk}: {exc}"
    return None


@short_and_long(short=300, long=5_000)
def test_every_route_answers_only_what_it_documents(fuzzed: Fuzzed, n: int) -> None:
    with httpx.Client(base_url=fuzzed.base, timeout=30) as http:
        document = http.get("/openapi.json").json()
        # The limit the ingress follows: nats max_payload less 64 KiB of headers.
        body_limit = 8 * 1024 * 1024 - 64 * 1024
        statuses: collections.Counter[tuple[str, int]] = collections.Counter()
        failures: list[str] = []
        seen: set[tuple[str, str, str, int]] = set()

        @settings(
            max_examples=n,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(cases(document, body_limit, fuzzed.key))
        def one(case: Any) -> None:
            (method, path, operation), params, body, auth, content_type = case
            url = path
            for name, value in params.items():
                url = url.replace("{" + name + "}", quote(value, safe=""))
            headers = {"content-type": content_type}
            if auth:
                headers["authorization"] = auth
            if path == "/v1/files" and method == "POST":
                response = http.post(
                    url,
                    files={"file": ("f.jsonl", body)},
                    data={"purpose": "batch"},
                    headers={"authorization": auth} if auth else {},
                )
            else:
                response = http.request(method, url, content=body or None, headers=headers)
            statuses[(f"{method} {path}", response.status_code)] += 1
            documented, schema = _documented_schema(operation, response.status_code)
            problem = None
            if response.status_code >= 500:
                problem = "5xx"
            elif not documented:
                problem = "undocumented status"
            elif response.headers.get("content-type", "").startswith("text/event-stream"):
                problem = _sse_problem(response.content, path)
            elif schema is not None:
                try:
                    msgspec.json.decode(response.content, type=TYPES[schema])
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    problem = f"body is not a {schema}: {exc}"
            kind = (problem, method, path, response.status_code)
            if problem and kind not in seen and len(failures) < 12:
                seen.add(kind)
                failures.append(
                    f"{problem}: {method} {url} {body[:120]!r} -> {response.status_code} "
                    f"{response.text[:300]}"
                )

        one()
        print(f"\n{sum(statuses.values())} requests: {dict(sorted(statuses.items()))}")
        assert not failures, "\n".join(failures)
        assert http.get("/healthz").status_code == 200
