"""``/v1/messages`` with the official anthropic SDK pointed at the ingress: messages,
streams, tools, Anthropic's error shape, and the key as ``x-api-key``. Any deployment
serves it: here the in-process mock, an OpenAI-compatible upstream and the fake
Anthropic server (the chat request is translated again for it)."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from tests.broker.tenancy.test_tenancy import Tenancy, tenancy  # noqa: F401 (fixture)
from tests.conftest import Stack

TOOL = {
    "name": "lookup",
    "description": "look a word up",
    "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def client(stack: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.ingress, api_key="unused", max_retries=0, timeout=20)


@pytest.mark.parametrize("model", ["mock-gpt", "upstream-gpt"])
def test_create_answers_as_a_message(client: anthropic.Anthropic, model: str) -> None:
    message = client.messages.create(
        model=model,
        max_tokens=100,
        system="be brief",
        messages=[{"role": "user", "content": "hello there"}],
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    [block] = message.content
    assert block.type == "text" and block.text == "mock reply to: hello there"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 5
    assert message.usage.input_tokens > 0


def test_max_tokens_stops_the_message(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="mock-gpt",
        max_tokens=2,
        messages=[{"role": "user", "content": [{"type": "text", "text": "a b c"}]}],
    )
    assert message.stop_reason == "max_tokens"
    assert message.content[0].type == "text" and message.content[0].text == "mock reply"


def test_stream_with_the_sdk_helpers(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="mock-gpt", max_tokens=100, messages=[{"role": "user", "content": "stream me"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "mock reply to: stream me"
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 5 and final.usage.input_tokens > 0


def test_raw_stream_events_in_order(client: anthropic.Anthropic) -> None:
    kinds = [
        event.type
        for event in client.messages.create(
            model="mock-gpt",
            max_tokens=100,
            stream=True,
            messages=[{"role": "user", "content": "raw"}],
        )
    ]
    assert kinds[0] == "message_start"
    assert kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}


def test_tool_use_round_trip(client: anthropic.Anthropic) -> None:
    called = client.messages.create(
        model="mock-gpt",
        max_tokens=100,
        tools=[TOOL],  # type: ignore[list-item]
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "weather"}],
    )
    assert called.stop_reason == "tool_use"
    [use] = called.content
    assert use.type == "tool_use" and use.name == "lookup" and use.input == {"text": "weather"}
    answered = client.messages.create(
        model="mock-gpt",
        max_tokens=100,
        tools=[TOOL],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "weather"},
            {"role": "assistant", "content": [use.model_dump()]},  # type: ignore[list-item]
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
            },
        ],
    )
    assert answered.content[0].type == "text"
    assert answered.content[0].text == "mock reply to tool output: sunny"


def test_streamed_tool_use(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="mock-gpt",
        max_tokens=100,
        tools=[TOOL],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "lookup"},
        messages=[{"role": "user", "content": "stream a call"}],
    ) as stream:
        final = stream.get_final_message()
    [use] = final.content
    assert use.type == "tool_use" and use.input == {"text": "stream a call"}
    assert final.stop_reason == "tool_use"


def test_served_by_a_native_anthropic_deployment(client: anthropic.Anthropic, stack: Stack) -> None:
    """Messages in, chat on the bus, Messages again to the fake Anthropic upstream."""
    message = client.messages.create(
        model="claude", max_tokens=50, messages=[{"role": "user", "content": "through claude"}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "fake anthropic reply to: through claude"


def test_errors_come_in_anthropics_shape(client: anthropic.Anthropic, stack: Stack) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(
            model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["type"] == "error"  # type: ignore[index]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    cases = [
        ({"max_tokens": 0}, "max_tokens"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        (
            {"tools": [{"type": "web_search_20250305", "name": "w", "input_schema": {}}]},
            "tools[0].type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "document"}]}]},
            "messages[0].content[0].type",
        ),
    ]
    for extra, param in cases:
        body = {
            "model": "mock-gpt",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "x"}],
        }
        response = httpx.post(f"{stack.ingress}/v1/messages", json=body | extra, timeout=10)
        assert response.status_code == 400, response.text
        error = response.json()
        assert error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error"
        assert error["error"]["param"] == param


def test_the_key_as_x_api_key(tenancy: Tenancy) -> None:  # noqa: F811
    key = tenancy.create_key(tenant="claude-code")
    base = tenancy.ingresses[0]
    answered = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0).messages.create(
        model="mock-gpt", max_tokens=20, messages=[{"role": "user", "content": "by key"}]
    )
    assert answered.content[0].type == "text"
    with pytest.raises(anthropic.AuthenticationError) as refused:
        anthropic.Anthropic(base_url=base, api_key="sk-pb-wrong", max_retries=0).messages.create(
            model="mock-gpt", max_tokens=20, messages=[{"role": "user", "content": "x"}]
        )
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
