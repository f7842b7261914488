"""The Gemini adapter against a fake Gemini API: the exact request we send and the exact
OpenAI answer we return, streamed and not, with tools, media, safety blocks and errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import msgspec
import pytest

from schemas.chat import ChatCompletionRequest, EmbeddingRequest
from schemas.config import DeploymentConfig
from schemas.errors import BrokerError
from tests.fakes import gemini as fake_gemini
from tests.fakes.server import FakeUpstream, Scripted, ThreadedServer
from workers.mock.content import embedding
from workers.providers.gemini import GeminiProvider

KEY = "AIza-test"
MODEL = "gemini-2.5-flash"


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeUpstream, str]]:
    upstream = FakeUpstream(KEY)
    server = ThreadedServer(fake_gemini.create_app(upstream)).start()
    try:
        yield upstream, server.url
    finally:
        server.stop()


def make(url: str, key: str | None = KEY) -> GeminiProvider:
    deployment = DeploymentConfig(provider="gemini", name="gem", base_url=url, model=MODEL)
    return GeminiProvider(deployment, key)


@pytest.fixture
async def provider(fake: tuple[FakeUpstream, str]) -> AsyncIterator[GeminiProvider]:
    upstream, url = fake
    upstream.reset()
    adapter = make(url)
    yield adapter
    await adapter.aclose()


def request(**fields: Any) -> ChatCompletionRequest:
    return msgspec.convert({"model": "gem"} | fields, ChatCompletionRequest)


def decoded(body: bytes) -> dict[str, Any]:
    value: dict[str, Any] = msgspec.json.decode(body)
    assert isinstance(value.pop("created"), int)
    return value


def gemini_response(parts: list[dict[str, Any]], finish: str = "STOP") -> dict[str, Any]:
    return {
        "candidates": [
            {"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}
        ],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4, "totalTokenCount": 7},
        "modelVersion": MODEL,
        "responseId": "abc",
    }


async def test_text_request_and_response(
    provider: GeminiProvider, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    body = await provider.complete(
        request(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hello there"},
            ],
            temperature=0.5,
            top_p=0.8,
            max_tokens=100,
            stop=["END", "STOP"],
            n=2,
            seed=3,
            presence_penalty=0.1,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    )
    sent = upstream.last
    assert sent.path == f"/v1beta/models/{MODEL}:generateContent"
    assert sent.headers["x-goog-api-key"] == KEY and "key" not in sent.query
    assert sent.body == {
        "contents": [{"role": "user", "parts": [{"text": "hello there"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "temperature": 0.5,
            "topP": 0.8,
            "maxOutputTokens": 100,
            "candidateCount": 2,
            "presencePenalty": 0.1,
            "seed": 3,
            "stopSequences": ["END", "STOP"],
            "responseMimeType": "application/json",
            "responseJsonSchema": schema,
        },
    }
    assert decoded(body) == {
        "id": "chatcmpl-resp-fake-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "fake gemini reply to: hello there",
                    "refusal": None,
                    "tool_calls": None,
                    "function_call": None,
                    "annotations": None,
                    "audio": None,
                },
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 8,
            "completion_tokens": 6,
            "total_tokens": 14,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
        "system_fingerprint": None,
        "service_tier": None,
    }


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


async def test_tool_calls_both_ways(
    provider: GeminiProvider, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    upstream.script(
        Scripted(
            body=gemini_response(
                [{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}]
            )
        )
    )
    body = await provider.complete(
        request(
            messages=[
                {"role": "user", "content": "Paris?"},
                {
                    "role": "assistant",
                    "content": "Let me check.",
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 18}'},
                {"role": "tool", "tool_call_id": "call_a", "content": "plain text"},
                {"role": "user", "content": "Oslo?"},
            ],
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
    )
    sent = upstream.last.body
    assert sent["contents"] == [
        {"role": "user", "parts": [{"text": "Paris?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Let me check."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}},
                {
                    "functionResponse": {
                        "name": "get_weather",
                        "response": {"content": "plain text"},
                    }
                },
                {"text": "Oslo?"},
            ],
        },
    ]
    assert sent["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                }
            ]
        }
    ]
    assert sent["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }
    choice = decoded(body)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {
            "id": "call_abc_0",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        }
    ]


async def test_media_parts(provider: GeminiProvider, fake: tuple[FakeUpstream, str]) -> None:
    upstream, _ = fake
    await provider.complete(
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw=="},
                        },
                        {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}},
                        {
                            "type": "input_audio",
                            "input_audio": {"data": "UklGRg==", "format": "wav"},
                        },
                    ],
                }
            ]
        )
    )
    assert upstream.last.body["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw=="}},
        {"fileData": {"mimeType": "image/png", "fileUri": "https://x.test/cat.png"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
    ]


async def test_blocked_prompt_is_a_clear_400(
    provider: GeminiProvider, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    blocked = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 4},
    }
    upstream.script(Scripted(body=blocked), Scripted(events=[blocked]))
    with pytest.raises(BrokerError) as caught:
        await provider.complete(request(messages=[{"role": "user", "content": "bad"}]))
    assert caught.value.status == 400 and caught.value.detail.code == "content_filtered"
    assert "SAFETY" in caught.value.message and not caught.value.retryable
    with pytest.raises(BrokerError) as streamed:
        async for _ in provider.stream(
            request(messages=[{"role": "user", "content": "bad"}], stream=True)
        ):
            pass
    assert streamed.value.detail.code == "content_filtered"


async def test_safety_finish_is_content_filter(
    provider: GeminiProvider, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    upstream.script(Scripted(body=gemini_response([{"text": "I"}], finish="SAFETY")))
    body = await provider.complete(request(messages=[{"role": "user", "content": "x"}]))
    assert decoded(body)["choices"][0]["finish_reason"] == "content_filter"


def delta(**fields: Any) -> dict[str, Any]:
    base = {"role": None, "content": None, "refusal": None, "tool_calls": None}
    return base | {"function_call": None} | fields


async def test_stream_text_with_usage(
    provider: GeminiProvider, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    bodies = [
        b
        async for b in provider.stream(
            request(
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    ]
    assert upstream.last.path == f"/v1beta/models/{MODEL}:streamGenerateContent"
    assert upstream.last.query == {"alt": "sse"}
    common = {
        "id": "chatcmpl-resp-fake-1",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "system_fingerprint": None,
        "service_tier": None,
    }

    def choice(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return common | {
            "choices": [{"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}],
            "usage": None,
        }

    usage = {
        "prompt_tokens": 8,
        "completion_tokens": 5,
        "total_tokens": 13,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    assert [decoded(b) for b in bodies] == [
        choice(delta(role="assistant", content="fake ")),
        choice(delta(content="gemini ")),
        choice(delta(content="reply ")),
        choice(delta(content="to: ")),
        choice(delta(content="hi"), "stop"),
        common | {"choices": [], "usage": usage},
    ]


async def test_stream_tool_call(provider: GeminiProvider, fake: tuple[FakeUpstream, str]) -> None:
    upstream, _ = fake
    call = {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}, "id": "fc-1"}}
    upstream.script(Scripted(events=[gemini_response([call])]))
    bodies = [
        b
        async for b in provider.stream(
            request(messages=[{"role": "user", "content": "x"}], tools=TOOLS, stream=True)
        )
    ]
    [chunk] = [decoded(b) for b in bodies]
    choice = chunk["choices"][0]
    assert choice["delta"]["tool_calls"] == [
        {
            "index": 0,
            "id": "fc-1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        }
    ]
    assert choice["finish_reason"] == "tool_calls"


def google_error(code: int, status: str, message: str, *details: dict[str, Any]) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status, "details": list(details)}}


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable", "retry_after"),
    [
        (
            429,
            google_error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"},
            ),
            "upstream_rate_limited",
            True,
            37.0,
        ),
        (
            400,
            google_error(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens "
                "allowed (1048576).",
            ),
            "context_length_exceeded",
            False,
            None,
        ),
        (
            503,
            google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
            "upstream_server_error",
            True,
            None,
        ),
        (
            400,
            google_error(400, "INVALID_ARGUMENT", "Invalid value at 'generation_config'"),
            "upstream_bad_request",
            False,
            None,
        ),
    ],
)
async def test_errors_map_to_categories(
    provider: GeminiProvider,
    fake: tuple[FakeUpstream, str],
    status: int,
    body: dict[str, Any],
    code: str,
    retryable: bool,
    retry_after: float | None,
) -> None:
    upstream, _ = fake
    upstream.script(Scripted(status=status, body=body))
    with pytest.raises(BrokerError) as caught:
        await provider.complete(request(messages=[{"role": "user", "content": "x"}]))
    error = caught.value
    assert (error.status, error.detail.code, error.retryable) == (status, code, retryable)
    assert error.retry_after == retry_after
    assert body["error"]["message"] in error.message and "`gem`" in error.message


@pytest.mark.parametrize(("key", "status"), [("wrong", 401), (None, 403)])
async def test_key_problems_are_auth_failures(
    fake: tuple[FakeUpstream, str], key: str | None, status: int
) -> None:
    _, url = fake
    adapter = make(url, key)
    try:
        with pytest.raises(BrokerError) as caught:
            await adapter.complete(request(messages=[{"role": "user", "content": "x"}]))
    finally:
        await adapter.aclose()
    assert caught.value.status == status
    assert caught.value.detail.code == "upstream_auth_failed" and not caught.value.retryable


async def test_embeddings(provider: GeminiProvider, fake: tuple[FakeUpstream, str]) -> None:
    upstream, _ = fake
    result = await provider.embed(
        EmbeddingRequest(model="gem", input=["alpha beta", "gamma"], dimensions=4)
    )
    sent = upstream.last
    assert sent.path == f"/v1beta/models/{MODEL}:batchEmbedContents"
    assert sent.body == {
        "requests": [
            {
                "model": f"models/{MODEL}",
                "outputDimensionality": 4,
                "content": {"parts": [{"text": "alpha beta"}]},
            },
            {
                "model": f"models/{MODEL}",
                "outputDimensionality": 4,
                "content": {"parts": [{"text": "gamma"}]},
            },
        ]
    }
    assert [e.embedding for e in result.data] == [embedding("alpha beta", 4), embedding("gamma", 4)]
    assert [e.index for e in result.data] == [0, 1] and result.model == MODEL
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (0, 0)


async def test_fake_rejects_what_the_real_api_rejects(fake: tuple[FakeUpstream, str]) -> None:
    _, url = fake
    path = f"/v1beta/models/{MODEL}:generateContent"
    ok = {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}
    cases = [
        (ok | {"temperature": 1}, "temperature"),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "role"),
        (
            {
                "contents": [
                    {
                        "role": "user",
                        "parts": [{"text": "x", "inlineData": {"mimeType": "a", "data": "b"}}],
                    }
                ]
            },
            "oneof",
        ),
        ({"contents": []}, "length"),
    ]
    async with httpx.AsyncClient(base_url=url) as client:
        for body, mentioned in cases:
            response = await client.post(path, json=body, params={"key": KEY})
            assert response.status_code == 400, body
            error = response.json()["error"]
            assert error["status"] == "INVALID_ARGUMENT" and mentioned in error["message"]
        accepted = await client.post(path, json=ok, params={"key": KEY})
        assert accepted.status_code == 200
