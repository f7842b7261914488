"""``/v1/completions`` (legacy text completions) with the official openai SDK pointed at
the ingress: answers from the in-process mock and an OpenAI-compatible upstream, streams,
several prompts, unknown fields forwarded, and the 400s: a bad prompt, a model whose
providers have no such API (refused at the door, and by the worker for NATS callers)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from broker.client import BrokerClient
from schemas.errors import InvalidRequest
from schemas.settings import load_config
from tests.conftest import Stack


@pytest.mark.parametrize("model", ["mock-gpt", "upstream-gpt"])
def test_create_answers_a_text_completion(openai_client: openai.OpenAI, model: str) -> None:
    completion = openai_client.completions.create(model=model, prompt="once upon a time")
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    [choice] = completion.choices
    assert choice.text == "mock completion of: once upon a time"
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 4 and completion.usage.completion_tokens == 7


def test_several_prompts_and_choices_in_openais_order(openai_client: openai.OpenAI) -> None:
    completion = openai_client.completions.create(
        model="upstream-gpt", prompt=["first", "second"], n=2, max_tokens=3
    )
    texts = [(c.index, c.text, c.finish_reason) for c in completion.choices]
    assert texts == [
        (0, "mock completion of:", "length"),
        (1, "mock completion of:", "length"),
        (2, "mock completion of:", "length"),
        (3, "mock completion of:", "length"),
    ]
    echoed = openai_client.completions.create(model="mock-gpt", prompt=[1, 2, 3], echo=True)
    assert echoed.choices[0].text == "1 2 3mock completion of: 1 2 3"


@pytest.mark.parametrize("model", ["mock-gpt", "upstream-gpt"])
def test_stream_with_the_sdk(openai_client: openai.OpenAI, model: str) -> None:
    chunks = list(
        openai_client.completions.create(
            model=model,
            prompt="stream me",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.text for chunk in chunks for c in chunk.choices)
    assert text == "mock completion of: stream me"
    assert [c.finish_reason for c in chunks[-2].choices] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    assert all(chunk.object == "text_completion" for chunk in chunks)


def test_unknown_fields_reach_the_upstream(openai_client: openai.OpenAI, stack: Stack) -> None:
    extra = {"top_k": 5, "repetition_penalty": 1.1}
    openai_client.completions.create(model="upstream-gpt", prompt="vllm", extra_body=extra)
    seen = httpx.get(f"{stack.upstream}/_stats").json()["last_unknown_fields"]
    assert seen == extra


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "mock-gpt"}, "prompt"),
        ({"model": "mock-gpt", "prompt": ["text", 7]}, "prompt"),
        ({"model": "mock-gpt", "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"model": "mock-gpt", "prompt": "x", "logprobs": 9}, "logprobs"),
        ({"model": "mock-gpt", "prompt": {"a": 1}}, "prompt"),
    ],
)
def test_a_bad_request_is_a_400_naming_its_param(
    http: httpx.Client, body: dict[str, object], param: str
) -> None:
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("model", ["claude", "gemini-flash"])
def test_native_providers_have_no_text_completions(
    openai_client: openai.OpenAI, model: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.completions.create(model=model, prompt="x")
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["code"] == "unsupported_endpoint" and error["param"] == "model"
    assert error["message"] == (
        f"The model `{model}` cannot serve /v1/completions: none of its deployments has a "
        "text completions API. Send the prompt to /v1/chat/completions as a user message."
    )


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[BrokerClient]:
    broker = await BrokerClient.connect(load_config(stack.config_path), stack.nats_url)
    yield broker
    await broker.close()


async def test_over_nats(client: BrokerClient) -> None:
    answer = await client.completions({"model": "upstream-gpt", "prompt": "over nats"})
    assert answer.choices[0].text == "mock completion of: over nats"


async def test_the_worker_refuses_it_for_a_native_provider(client: BrokerClient) -> None:
    """A NATS caller skips the ingress's check: the Anthropic adapter says it itself."""
    with pytest.raises(InvalidRequest) as refused:
        await client.completions({"model": "claude", "prompt": "x"})
    assert refused.value.detail.code == "unsupported_endpoint"
    assert "its provider (Anthropic) has no text completions API" in refused.value.detail.message
