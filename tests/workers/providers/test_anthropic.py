"""The Anthropic adapter against a fake Messages API: the exact request we send and the
exact OpenAI answer we return, streamed and not, with tools, images and errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest

from schemas.chat import ChatCompletionRequest
from schemas.config import DeploymentConfig
from schemas.errors import BrokerError
from tests.fakes import anthropic as fake_anthropic
from tests.fakes.server import FakeUpstream, Scripted, ThreadedServer
from workers.providers.anthropic import AnthropicProvider

KEY = "sk-ant-test"
PNG = "iVBORw0KGgo="


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeUpstream, str]]:
    upstream = FakeUpstream(KEY)
    server = ThreadedServer(fake_anthropic.create_app(upstream)).start()
    try:
        yield upstream, server.url
    finally:
        server.stop()


@pytest.fixture
async def provider(fake: tuple[FakeUpstream, str]) -> AsyncIterator[AnthropicProvider]:
    upstream, url = fake
    upstream.reset()
    deployment = DeploymentConfig(
        provider="anthropic", name="claude", base_url=url, model="claude-sonnet-4-5"
    )
    adapter = AnthropicProvider(deployment, KEY)
    yield adapter
    await adapter.aclose()


def request(**fields: Any) -> ChatCompletionRequest:
    return msgspec.convert({"model": "claude"} | fields, ChatCompletionRequest)


def without_created(body: bytes) -> dict[str, Any]:
    value = msgspec.json.decode(body)
    assert isinstance(value["created"], int)
    del value["created"]
    return value  # type: ignore[no-any-return]


async def test_text_request_and_response(
    provider: AnthropicProvider, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    body = await provider.complete(
        request(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "No lists."}]},
                {"role": "user", "content": "hello there"},
            ],
            temperature=0.3,
            top_p=0.9,
            stop="END",
            user="u-42",
            seed=7,  # a hint Anthropic has no equivalent for: dropped
        ),
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    sent = upstream.last
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert "authorization" not in sent.headers
    assert sent.body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        "system": "Be brief.\n\nNo lists.",
        "temperature": 0.3,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-42"},
    }
    assert without_created(body) == {
        "id": "msg_fake0001",
        "object": "chat.completion",
        "model": "claude-sonnet-4-5",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "fake anthropic reply to: hello there",
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
            "prompt_tokens": 10,
            "completion_tokens": 6,
            "total_tokens": 16,
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
    provider: AnthropicProvider, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    upstream.script(
        Scripted(
            body={
                "id": "msg_tools",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Oslo"},
                    },
                ],
                "stop_reason": "tool_use",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 50,
                    "output_tokens": 20,
                    "cache_read_input_tokens": 30,
                    "cache_creation_input_tokens": 5,
                },
            }
        )
    )
    body = await provider.complete(
        request(
            messages=[
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_b", "content": "24C"},
                {"role": "user", "content": "And Oslo?"},
            ],
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False,
            max_completion_tokens=300,
        )
    )
    sent = upstream.last.body
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_a",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_b",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
        },
        {
            "role": "user",  # both results and the next question in one user turn
            "content": [
                {"type": "tool_result", "tool_use_id": "call_a", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_b", "content": "24C"},
                {"type": "text", "text": "And Oslo?"},
            ],
        },
    ]
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert sent["tool_choice"] == {
        "type": "tool",
        "name": "get_weather",
        "disable_parallel_tool_use": True,
    }
    assert sent["max_tokens"] == 300
    answer = without_created(body)
    assert answer["choices"][0]["message"]["content"] == "Checking."
    assert answer["choices"][0]["message"]["tool_calls"] == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        }
    ]
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    assert answer["usage"]["prompt_tokens"] == 50 + 30 + 5
    assert answer["usage"]["prompt_tokens_details"] == {"cached_tokens": 30, "audio_tokens": None}
    assert answer["usage"]["total_tokens"] == 85 + 20


async def test_images_and_documents(
    provider: AnthropicProvider, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    await provider.complete(
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                        {
                            "type": "file",
                            "file": {
                                "file_data": "data:application/pdf;base64,JVBERi0=",
                                "filename": "a.pdf",
                            },
                        },
                    ],
                }
            ]
        )
    )
    assert upstream.last.body["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        },
    ]


def chunks_of(bodies: list[bytes]) -> list[dict[str, Any]]:
    chunks = [msgspec.json.decode(b) for b in bodies]
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        del chunk["created"], chunk["object"]
    return chunks


def delta(**fields: Any) -> dict[str, Any]:
    base = {"role": None, "content": None, "refusal": None, "tool_calls": None}
    return base | {"function_call": None} | fields


async def test_stream_text_with_usage(
    provider: AnthropicProvider, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    bodies = [
        b
        async for b in provider.stream(
            request(
                messages=[{"role": "user", "content": "one two"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    ]
    assert upstream.last.body["stream"] is True
    assert upstream.last.headers["accept"] == "text/event-stream"
    common = {"id": "msg_fake0001", "model": "claude-sonnet-4-5", "system_fingerprint": None}
    common |= {"service_tier": None}

    def choice(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return common | {
            "choices": [{"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}],
            "usage": None,
        }

    words = ["fake ", "anthropic ", "reply ", "to: ", "one ", "two"]
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 6,
        "total_tokens": 16,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    assert chunks_of(bodies) == [
        choice(delta(role="assistant", content="")),
        *(choice(delta(content=w)) for w in words),
        choice(delta(), "stop"),
        common | {"choices": [], "usage": usage},
    ]


async def test_stream_tool_use(provider: AnthropicProvider, fake: tuple[FakeUpstream, str]) -> None:
    upstream, _ = fake
    message = {
        "id": "msg_st",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}}
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 9},
    }
    upstream.script(Scripted(body=message))
    bodies = [
        b
        async for b in provider.stream(
            request(messages=[{"role": "user", "content": "Oslo?"}], tools=TOOLS, stream=True)
        )
    ]
    chunks = chunks_of(bodies)
    calls = [
        c["choices"][0]["delta"]["tool_calls"]
        for c in chunks
        if c["choices"][0]["delta"]["tool_calls"]
    ]
    assert calls[0] == [
        {
            "index": 0,
            "id": "toolu_9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
    ]
    arguments = "".join(c[0]["function"]["arguments"] for c in calls[1:])
    assert msgspec.json.decode(arguments) == {"city": "Oslo"}
    assert all(c[0]["index"] == 0 and c[0]["id"] is None for c in calls[1:])
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] is None  # include_usage was not asked for


def sample_message() -> dict[str, Any]:
    """The fake's default answer to ``x``: a plain text message."""
    ask = b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}]}'
    return fake_anthropic.default_message(fake_anthropic._decoder.decode(ask))


def anthropic_error(type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type, "message": message}}


@pytest.mark.parametrize(
    ("status", "type", "message", "headers", "code", "retryable"),
    [
        (
            429,
            "rate_limit_error",
            "Number of requests has exceeded your rate limit",
            {"retry-after": "7"},
            "upstream_rate_limited",
            True,
        ),
        (529, "overloaded_error", "Overloaded", {}, "upstream_server_error", True),
        (
            400,
            "invalid_request_error",
            "prompt is too long: 210000 tokens > 200000 maximum",
            {},
            "context_length_exceeded",
            False,
        ),
        (
            400,
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API.",
            {},
            "upstream_quota_exceeded",
            False,
        ),
        (
            403,
            "permission_error",
            "Your API key does not have permission",
            {},
            "upstream_auth_failed",
            False,
        ),
        (
            400,
            "invalid_request_error",
            "temperature: range is 0-1",
            {},
            "upstream_bad_request",
            False,
        ),
    ],
)
async def test_errors_map_to_categories(
    provider: AnthropicProvider,
    fake: tuple[FakeUpstream, str],
    status: int,
    type: str,
    message: str,
    headers: dict[str, str],
    code: str,
    retryable: bool,
) -> None:
    upstream, _ = fake
    upstream.script(Scripted(status=status, body=anthropic_error(type, message), headers=headers))
    with pytest.raises(BrokerError) as caught:
        await provider.complete(request(messages=[{"role": "user", "content": "hi"}]))
    error = caught.value
    assert (error.status, error.detail.code, error.retryable) == (status, code, retryable)
    assert error.detail.type == "upstream_error"
    assert f"HTTP {status} {type}: {message}" in error.message and "`claude`" in error.message
    if headers:
        assert error.retry_after == 7.0


async def test_wrong_key_is_an_auth_failure(fake: tuple[FakeUpstream, str]) -> None:
    _, url = fake
    deployment = DeploymentConfig(provider="anthropic", name="bad", base_url=url)
    adapter = AnthropicProvider(deployment, "sk-wrong")
    try:
        with pytest.raises(BrokerError) as caught:
            await adapter.complete(request(messages=[{"role": "user", "content": "hi"}]))
    finally:
        await adapter.aclose()
    assert caught.value.status == 401 and caught.value.detail.code == "upstream_auth_failed"
    assert "invalid x-api-key" in caught.value.message


async def test_error_event_mid_stream(
    provider: AnthropicProvider, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    events = [
        *fake_anthropic.message_events(sample_message())[:4],
        anthropic_error("overloaded_error", "Overloaded"),
    ]
    upstream.script(Scripted(events=events))
    received = []
    with pytest.raises(BrokerError) as caught:
        async for body in provider.stream(
            request(messages=[{"role": "user", "content": "x"}], stream=True)
        ):
            received.append(body)
    assert len(received) == 2  # the role chunk and the first word went out before it
    assert caught.value.status == 529 and caught.value.retryable
    assert caught.value.detail.code == "upstream_server_error"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
    ],
)
async def test_unsupported_features_are_refused_before_sending(
    provider: AnthropicProvider,
    fake: tuple[FakeUpstream, str],
    fields: dict[str, Any],
    param: str,
) -> None:
    upstream, _ = fake
    with pytest.raises(BrokerError) as caught:
        await provider.complete(request(messages=[{"role": "user", "content": "hi"}], **fields))
    assert caught.value.status == 400 and caught.value.detail.param == param
    assert caught.value.detail.code == "unsupported_parameter"
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [("max_tokens", "length"), ("refusal", "content_filter"), ("stop_sequence", "stop")],
)
async def test_stop_reasons(
    provider: AnthropicProvider, fake: tuple[FakeUpstream, str], stop_reason: str, finish: str
) -> None:
    upstream, _ = fake
    message = sample_message() | {"stop_reason": stop_reason}
    upstream.script(Scripted(body=message))
    body = await provider.complete(request(messages=[{"role": "user", "content": "x"}]))
    assert msgspec.json.decode(body)["choices"][0]["finish_reason"] == finish


async def test_fake_rejects_what_the_real_api_rejects(fake: tuple[FakeUpstream, str]) -> None:
    """The fake is strict like the real API, so passing it means something."""
    import httpx

    _, url = fake
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    ok = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    async with httpx.AsyncClient(base_url=url) as client:
        cases = [
            (ok, {"x-api-key": KEY}, "anthropic-version"),
            (ok | {"messages": [{"role": "system", "content": "x"}]}, headers, "role"),
            ({k: v for k, v in ok.items() if k != "max_tokens"}, headers, "max_tokens"),
            (ok | {"frequency_penalty": 1}, headers, "frequency_penalty"),
            (
                ok | {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
                headers,
                "length",
            ),
        ]
        for body, sent_headers, mentioned in cases:
            response = await client.post("/v1/messages", json=body, headers=sent_headers)
            assert response.status_code == 400, body
            error = response.json()
            assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
            assert mentioned in error["error"]["message"]


def test_the_fake_is_refereed_by_the_sdk_types() -> None:
    """The fake's checks include the anthropic SDK's own types (tests/fakes/sdk_types.py)."""
    from tests.fakes import sdk_types

    good = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    assert sdk_types.anthropic_request_problem(good) is None
    problem = sdk_types.anthropic_request_problem(
        {k: v for k, v in good.items() if k != "max_tokens"}
    )
    assert problem is not None and "max_tokens" in problem
    with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
        sdk_types.anthropic_answer({"id": "msg_1", "type": "message", "content": "not a list"})
    with pytest.raises(ValueError):
        sdk_types.anthropic_events([{"type": "content_block_delta", "index": "zero"}])
