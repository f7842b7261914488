"""Fuzzed request bodies against the running ingress: 0 5xx, the process alive.

Bodies come from the ingress's own /openapi.json (schema_strategy.py): valid requests
for served models, requests broken in one way, arbitrary JSON, arbitrary bytes, wrong
Content-Types and timeout headers. Every answer must be a 2xx or a 4xx with the OpenAI
error body; a 5xx is a bug in the ingress or the schemas.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Stack
from tests.fakes.stack import EMBEDDING_MODELS
from tests.reliability.conftest import short_and_long
from tests.reliability.schema_strategy import JSON, SchemaStrategies

PRINTABLE = st.characters(min_codepoint=32, max_codepoint=126)  # what HTTP headers may hold
CHAT_MODELS = ["mock-gpt", "no-such-model", "mock-slow"]  # "orphan" 503s by design


def cases(document: dict[str, Any]) -> st.SearchStrategy[tuple[str, bytes, dict[str, str]]]:
    schemas = SchemaStrategies(document["components"]["schemas"], CHAT_MODELS)
    embed = SchemaStrategies(document["components"]["schemas"], EMBEDDING_MODELS)
    chat_body = schemas.body("ChatCompletionRequest").map(_no_slow_streams)
    bodies = st.one_of(
        st.tuples(st.just("/v1/chat/completions"), chat_body.map(msgspec.json.encode)),
        st.tuples(
            st.just("/v1/embeddings"), embed.body("EmbeddingRequest").map(msgspec.json.encode)
        ),
        st.tuples(
            st.sampled_from(["/v1/chat/completions", "/v1/embeddings"]),
            JSON.map(msgspec.json.encode) | st.binary(max_size=200),
        ),
    )
    headers = st.fixed_dictionaries(
        {"content-type": st.sampled_from(["application/json"] * 8 + ["text/plain", ""])},
        optional={
            "x-promptbus-timeout": st.sampled_from(["5", "0", "-1", "nan", "inf", "x", "1e400"]),
            "authorization": st.text(
                st.characters(min_codepoint=32, max_codepoint=126), max_size=30
            ).map(lambda t: f"Bearer {t}".strip()),
        },
    )
    return st.tuples(bodies, headers).map(lambda c: (c[0][0], c[0][1], _ascii(c[1])))


def _no_slow_streams(body: Any) -> Any:
    """mock-slow takes 1 s per answer: keep it for errors (broken bodies), not for work."""
    if isinstance(body, dict) and body.get("model") == "mock-slow":
        body = body | {"n": 0}  # n must be >= 1: a 400 without reaching the queue
    return body


def _ascii(headers: dict[str, str]) -> dict[str, str]:
    return {k: v.encode("ascii", "replace").decode() for k, v in headers.items()}


@short_and_long(short=400, long=10_000)
def test_fuzzed_bodies_get_no_5xx(stack: Stack, n: int) -> None:
    with httpx.Client(base_url=stack.ingress, timeout=30) as http:
        document = http.get("/openapi.json").json()
        statuses: collections.Counter[int] = collections.Counter()
        failures: list[str] = []
        started = time.perf_counter()

        @settings(
            max_examples=n,
            deadline=None,
            database=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
        )
        @given(cases(document))
        def one(case: tuple[str, bytes, dict[str, str]]) -> None:
            path, body, headers = case
            response = http.post(path, content=body, headers=headers)
            statuses[response.status_code] += 1
            if response.status_code >= 500 and len(failures) < 5:
                failures.append(f"{response.status_code} {path} {body[:300]!r}: {response.text}")
            if response.status_code >= 400:
                error = response.json()["error"]  # always the OpenAI error body
                assert isinstance(error["message"], str) and error["message"]

        one()
        elapsed = time.perf_counter() - started
        print(
            f"\nfuzzed {sum(statuses.values())} requests in {elapsed:.1f}s: "
            f"statuses {dict(sorted(statuses.items()))}"
        )
        assert not failures, "\n".join(failures)
        assert sum(statuses.values()) >= n * 0.9  # hypothesis ran (nearly) all of them
        assert http.get("/healthz").status_code == 200  # the process is alive
        ok = http.post(
            "/v1/chat/completions",
            json={"model": "mock-gpt", "messages": [{"role": "user", "content": "still there?"}]},
        )
        assert ok.status_code == 200, ok.text


pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
