"""Every native provider through the whole broker: openai SDK -> ingress -> NATS -> worker
-> fake Anthropic / Gemini / Azure server, and back."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import Stack
from tests.fakes.server import Scripted
from tests.fakes.stack import Fakes

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def fakes(stack: Stack) -> Fakes:
    assert stack.fakes is not None
    for fake in (stack.fakes.anthropic, stack.fakes.gemini, stack.fakes.azure):
        fake.reset()
    return stack.fakes


def test_anthropic_through_the_broker(openai_client: openai.OpenAI, fakes: Fakes) -> None:
    raw = openai_client.chat.completions.with_raw_response.create(
        model="claude",
        messages=[{"role": "system", "content": "Be brief."}, *HELLO],
        max_tokens=50,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "fake anthropic reply to: hello there"
    assert completion.model == "claude-sonnet-4-5"
    assert completion.usage is not None and completion.usage.prompt_tokens == 10
    assert raw.headers["x-promptbus-deployment"] == "claude-main"
    sent = fakes.anthropic.last
    assert sent.body["system"] == "Be brief." and sent.body["max_tokens"] == 50
    assert sent.headers["traceparent"].startswith("00-")  # the trace crosses the broker


def test_anthropic_stream_through_the_broker(openai_client: openai.OpenAI, fakes: Fakes) -> None:
    stream = openai_client.chat.completions.create(
        model="claude",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "fake anthropic reply to: hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_gemini_stream_through_the_broker(openai_client: openai.OpenAI, fakes: Fakes) -> None:
    stream = openai_client.chat.completions.create(
        model="gemini-flash", messages=HELLO, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "fake gemini reply to: hello there"
    assert fakes.gemini.last.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"


def test_azure_through_the_broker(openai_client: openai.OpenAI, fakes: Fakes) -> None:
    completion = openai_client.chat.completions.create(model="azure-gpt", messages=HELLO)
    assert completion.choices[0].message.content == "mock reply to: hello there"
    sent = fakes.azure.last
    assert sent.path == "/openai/deployments/prod-gpt4o/chat/completions"
    assert sent.query == {"api-version": "2024-10-21"}


def test_anthropic_rate_limit_reaches_the_caller(http: httpx.Client, fakes: Fakes) -> None:
    error = {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}}
    fakes.anthropic.script(Scripted(status=429, body=error, headers={"retry-after": "3"}))
    response = http.post("/v1/chat/completions", json={"model": "claude", "messages": HELLO})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.headers["x-should-retry"] == "true"
    body = response.json()["error"]
    assert body["type"] == "upstream_error" and body["code"] == "upstream_rate_limited"
    assert "rate_limit_error: Slow down" in body["message"]


def test_gemini_safety_block_is_a_400(http: httpx.Client, fakes: Fakes) -> None:
    fakes.gemini.script(Scripted(body={"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}))
    response = http.post("/v1/chat/completions", json={"model": "gemini-flash", "messages": HELLO})
    assert response.status_code == 400
    body = response.json()["error"]
    assert body["code"] == "content_filtered" and "PROHIBITED_CONTENT" in body["message"]
    assert response.headers["x-should-retry"] == "false"


def test_unsupported_feature_is_a_clear_400(http: httpx.Client, fakes: Fakes) -> None:
    response = http.post(
        "/v1/chat/completions", json={"model": "claude", "messages": HELLO, "n": 3}
    )
    assert response.status_code == 400
    body = response.json()["error"]
    assert body["param"] == "n" and body["code"] == "unsupported_parameter"
    assert fakes.anthropic.requests == []  # refused before the provider was called
