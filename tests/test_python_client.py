"""The repo's own NATS client: typed chat and chat_stream, errors as BrokerError."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from broker.client import BrokerClient
from broker.settings import load_config
from schemas.errors import BrokerError
from tests.conftest import Stack


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[BrokerClient]:
    broker = await BrokerClient.connect(load_config(stack.config_path), stack.nats_url)
    yield broker
    await broker.close()


async def test_chat(client: BrokerClient) -> None:
    completion = await client.chat(
        {"model": "mock-gpt", "messages": [{"role": "user", "content": "typed"}]}
    )
    assert completion.choices[0].message.content == "mock reply to: typed"


async def test_chat_stream(client: BrokerClient) -> None:
    chunks = [
        chunk
        async for chunk in client.chat_stream(
            {"model": "upstream-gpt", "messages": [{"role": "user", "content": "x y"}]}
        )
    ]
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == "mock reply to: x y"
    )


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [("nope", 404, "model_not_found"), ("orphan", 503, "no_worker_available")],
)
async def test_admission_errors(client: BrokerClient, model: str, status: int, code: str) -> None:
    with pytest.raises(BrokerError) as err:
        await client.chat({"model": model, "messages": [{"role": "user", "content": "x"}]})
    assert err.value.status == status and err.value.detail.code == code


async def test_validation_error_before_publish(client: BrokerClient) -> None:
    with pytest.raises(BrokerError) as err:
        await client.chat({"model": "mock-gpt", "messages": [], "top_p": 3})
    assert err.value.status == 400


async def test_deadline(client: BrokerClient) -> None:
    with pytest.raises(BrokerError) as err:
        await client.chat(
            {"model": "mock-slow", "messages": [{"role": "user", "content": "x"}]}, timeout=0.2
        )
    assert err.value.status == 504


async def test_stream_error_mid_request(client: BrokerClient) -> None:
    with pytest.raises(BrokerError) as err:
        async for _ in client.chat_stream(
            {
                "model": "upstream-gpt",
                "messages": [{"role": "user", "content": "x"}],
                "metadata": {"mock_status": "503"},
            }
        ):
            pass
    assert err.value.status == 503 and err.value.detail.type == "upstream_error"
