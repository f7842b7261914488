"""Embeddings: POST /v1/embeddings with the openai SDK, the NATS subject with raw nats-py,
BrokerClient.embeddings, through the mock, OpenAI-compatible and Gemini adapters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import nats
import openai
import pytest

from broker.client import BrokerClient
from schemas.errors import BrokerError
from schemas.settings import load_config
from tests import bus
from tests.conftest import Stack
from workers.mock.content import EMBEDDING_DIMENSIONS, embedding


def close(got: list[float], expected: list[float]) -> bool:
    """Equal up to float32 rounding (base64 carries float32)."""
    return len(got) == len(expected) and all(
        abs(a - b) < 1e-6 for a, b in zip(got, expected, strict=True)
    )


def test_sdk_default_base64(openai_client: openai.OpenAI) -> None:
    raw = openai_client.embeddings.with_raw_response.create(
        model="embed-mock", input=["the cat sat", "a dog ran"]
    )
    result = raw.parse()
    assert [d.index for d in result.data] == [0, 1]
    assert close(result.data[0].embedding, embedding("the cat sat", EMBEDDING_DIMENSIONS))
    assert close(result.data[1].embedding, embedding("a dog ran", EMBEDDING_DIMENSIONS))
    assert result.usage.prompt_tokens == 6 and result.usage.total_tokens == 6
    assert raw.headers["x-promptbus-deployment"] == "embed-mock/0"
    assert json.loads(raw.http_request.content)["encoding_format"] == "base64"


def test_float_format_and_dimensions(http: httpx.Client) -> None:
    response = http.post(
        "/v1/embeddings",
        json={"model": "embed-mock", "input": "hello", "encoding_format": "float", "dimensions": 8},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["data"][0]["object"] == "embedding"
    assert body["data"][0]["embedding"] == embedding("hello", 8)
    assert body["x_promptbus"] == {"deployment": "embed-mock/0", "failover_from": []}


def test_gemini_embeddings(openai_client: openai.OpenAI, stack: Stack) -> None:
    assert stack.fakes is not None
    stack.fakes.gemini.reset()
    result = openai_client.embeddings.create(
        model="embed-gemini", input=["alpha", "beta"], dimensions=16
    )
    assert len(result.data) == 2
    assert close(result.data[0].embedding, embedding("alpha", 16))
    assert close(result.data[1].embedding, embedding("beta", 16))
    sent = stack.fakes.gemini.last
    assert sent.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert [r["content"]["parts"][0]["text"] for r in sent.body["requests"]] == ["alpha", "beta"]
    assert result.model == "gemini-embedding-001"


def test_openai_compatible_embeddings(openai_client: openai.OpenAI) -> None:
    result = openai_client.embeddings.create(model="embed-openai", input="one two three")
    assert close(result.data[0].embedding, embedding("one two three", EMBEDDING_DIMENSIONS))
    assert result.model == "text-embedding-3-small"  # the upstream model, as it reported
    assert result.usage.prompt_tokens == 3


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "param"),
    [
        (
            "/v1/chat/completions",
            {"model": "embed-mock", "messages": [{"role": "user", "content": "x"}]},
            400,
            "wrong_endpoint",
            "model",
        ),
        ("/v1/embeddings", {"model": "mock-gpt", "input": "x"}, 400, "wrong_endpoint", "model"),
        ("/v1/embeddings", {"model": "nope", "input": "x"}, 404, "model_not_found", "model"),
        (
            "/v1/embeddings",
            {"model": "embed-mock", "input": [1, 2, 3]},
            400,
            "invalid_value",
            "input[0]",
        ),
        ("/v1/embeddings", {"model": "embed-mock", "input": []}, 400, "invalid_value", "input"),
        ("/v1/embeddings", {"model": "embed-mock"}, 400, "invalid_value", "input"),
    ],
)
def test_bad_requests(
    http: httpx.Client,
    path: str,
    body: dict[str, object],
    status: int,
    code: str,
    param: str | None,
) -> None:
    response = http.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["param"] == param


def test_anthropic_cannot_serve_embeddings() -> None:
    import msgspec

    from schemas.config import Config

    config = {
        "model_list": [
            {
                "model_name": "e",
                "mode": "embeddings",
                "deployments": [{"provider": "anthropic", "api_key_env": "K"}],
            }
        ]
    }
    with pytest.raises(msgspec.ValidationError, match="no embeddings API"):
        msgspec.convert(config, Config)


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[BrokerClient]:
    broker = await BrokerClient.connect(load_config(stack.config_path), stack.nats_url)
    yield broker
    await broker.close()


async def test_python_client(client: BrokerClient) -> None:
    result = await client.embeddings({"model": "embed-mock", "input": "hi there"})
    assert result.data[0].embedding == embedding("hi there", EMBEDDING_DIMENSIONS)
    with pytest.raises(BrokerError) as caught:
        await client.embeddings({"model": "mock-gpt", "input": "x"})
    assert caught.value.detail.code == "wrong_endpoint"


async def test_nats_subject(stack: Stack) -> None:
    """The contract of docs/subjects.md: publish the body to pb.embed.<model>."""
    nc = await bus.connect(stack.nats_url)
    try:
        inbox = nc.new_inbox()
        replies: asyncio.Queue[nats.aio.msg.Msg] = asyncio.Queue()

        async def on_reply(msg: nats.aio.msg.Msg) -> None:
            await replies.put(msg)

        await nc.subscribe(inbox, cb=on_reply)
        body = json.dumps({"model": "embed-mock", "input": ["x y"], "dimensions": 4}).encode()
        ack = await nc.request(
            "pb.embed.embed-mock", body, headers={"Pb-Reply-To": inbox, "Pb-Request-Id": "e1"}
        )
        assert json.loads(ack.data)["stream"] == "PB_REQUESTS"
        reply = await asyncio.wait_for(replies.get(), 10)
        assert reply.headers is not None and reply.headers["Pb-Kind"] == "response"
        assert reply.headers["Pb-Request-Id"] == "e1"
        assert json.loads(reply.data)["data"][0]["embedding"] == embedding("x y", 4)
    finally:
        await nc.drain()
