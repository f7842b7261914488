"""The official openai SDK against the ingress: it must just work."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.conftest import Stack

HELLO = [{"role": "user", "content": "hello there"}]


def test_chat_non_stream_mock(openai_client: openai.OpenAI) -> None:
    raw = openai_client.chat.completions.with_raw_response.create(model="mock-gpt", messages=HELLO)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "mock reply to: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 2 + 5
    assert raw.headers["x-promptbus-deployment"] == "mock-gpt/0"
    assert raw.headers["x-request-id"]
    stamp = {"deployment": "mock-gpt/0", "failover_from": []}
    assert completion.model_extra is not None and completion.model_extra["x_promptbus"] == stamp


@pytest.mark.parametrize("model", ["mock-gpt", "upstream-gpt"])
def test_a_stream_of_n_choices_carries_every_choice(
    openai_client: openai.OpenAI, model: str
) -> None:
    chunks = list(
        openai_client.chat.completions.create(model=model, messages=HELLO, stream=True, n=2)
    )
    texts: dict[int, str] = {}
    finished: set[int] = set()
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished.add(choice.index)
    assert texts == {0: "mock reply to: hello there", 1: "mock reply to: hello there"}
    assert finished == {0, 1}


def test_request_id_is_echoed(openai_client: openai.OpenAI) -> None:
    raw = openai_client.chat.completions.with_raw_response.create(
        model="mock-gpt", messages=HELLO, extra_headers={"x-request-id": "req-abc-123"}
    )
    assert raw.headers["x-request-id"] == "req-abc-123"
    again = openai_client.chat.completions.with_raw_response.create(
        model="mock-gpt", messages=HELLO, extra_headers={"x-request-id": "req-abc-123"}
    )  # a repeated request id is a new request, not a duplicate to drop
    assert again.headers["x-request-id"] == "req-abc-123" and again.parse().choices


def test_chat_stream_mock(openai_client: openai.OpenAI) -> None:
    stream = openai_client.chat.completions.create(
        model="mock-gpt", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "mock reply to: hello there"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].model_extra is not None
    assert chunks[0].model_extra["x_promptbus"]["deployment"] == "mock-gpt/0"


def test_chat_through_http_upstream(openai_client: openai.OpenAI, stack: Stack) -> None:
    before = stack.upstream_requests()
    completion = openai_client.chat.completions.create(
        model="upstream-gpt", messages=HELLO, temperature=0, max_tokens=50
    )
    assert completion.choices[0].message.content == "mock reply to: hello there"
    assert completion.model == "gpt-4o-mini"  # the upstream model name, as the upstream said
    assert stack.upstream_requests() == before + 1


def test_stream_through_http_upstream(openai_client: openai.OpenAI) -> None:
    with openai_client.chat.completions.create(
        model="upstream-gpt", messages=[{"role": "user", "content": "one two three"}], stream=True
    ) as stream:
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == "mock reply to: one two three"
    assert len(pieces) >= 5  # relayed chunk by chunk, not buffered into one


def test_rich_request_is_forwarded(openai_client: openai.OpenAI) -> None:
    """Images, tools, response_format, seeds and stops pass validation and the upstream's."""
    completion = openai_client.chat.completions.create(
        model="upstream-gpt",
        messages=[
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        tool_choice="auto",
        response_format={"type": "json_object"},
        seed=7,
        stop=["\n\n"],
        n=2,
        top_p=0.5,
        max_completion_tokens=100,
        user="u-1",
        metadata={"purpose": "test"},
    )
    assert len(completion.choices) == 2


def test_models_list_and_retrieve(openai_client: openai.OpenAI) -> None:
    ids = {m.id for m in openai_client.models.list()}
    assert {"mock-gpt", "upstream-gpt"} <= ids
    assert "orphan" not in ids  # configured, but no worker serves it
    assert openai_client.models.retrieve("mock-gpt").id == "mock-gpt"
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.models.retrieve("no-such-model")
    assert err.value.code == "model_not_found"


def test_async_client_concurrent_requests(stack: Stack) -> None:
    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{stack.ingress}/v1", api_key="x", max_retries=0)
        try:
            results = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="mock-gpt", messages=[{"role": "user", "content": f"n{i}"}]
                    )
                    for i in range(50)
                )
            )
        finally:
            await client.close()
        return [r.choices[0].message.content or "" for r in results]

    answers = asyncio.run(run())
    assert answers == [f"mock reply to: n{i}" for i in range(50)]  # each reply to its own request


def test_health_and_readiness(stack: Stack) -> None:
    assert httpx.get(f"{stack.ingress}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.ingress}/readyz")
    assert ready.status_code == 200 and ready.json()["stream"] == "PB_REQUESTS"


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_fields_reach_openai_compatible_upstreams(
    openai_client: openai.OpenAI, stack: Stack, stream: bool
) -> None:
    """vLLM's `top_k`, `repetition_penalty`: fields the OpenAI schema lacks reach an
    OpenAI-compatible upstream as sent (as LiteLLM does), streamed or not."""
    extra = {"top_k": 5, "repetition_penalty": 1.1, "guided_choice": ["a", "b"]}
    created = openai_client.chat.completions.create(
        model="upstream-gpt",
        messages=[{"role": "user", "content": "with extras"}],
        temperature=0,
        stream=stream,
        extra_body=extra,
    )
    if stream:
        assert "".join(c.choices[0].delta.content or "" for c in created if c.choices)
    else:
        assert created.choices[0].message.content  # type: ignore[union-attr]
    seen = httpx.get(f"{stack.upstream}/_stats").json()["last_unknown_fields"]
    assert seen == extra


def test_unknown_fields_for_a_native_provider_are_a_400_naming_them(
    openai_client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(
            model="claude",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"repetition_penalty": 1.1},
        )
    assert err.value.code == "unsupported_parameter"
    assert err.value.param == "repetition_penalty"  # type: ignore[attr-defined]
