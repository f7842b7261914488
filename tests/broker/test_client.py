"""The repo's own NATS client: typed chat and chat_stream, errors as BrokerError."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from broker.client import BrokerClient
from schemas.errors import BrokerError
from schemas.settings import load_config
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


async def test_a_stream_past_its_deadline_is_a_504(client: BrokerClient) -> None:
    """The wait for a stream's next chunk ends at the request's deadline."""
    started = asyncio.get_running_loop().time()
    with pytest.raises(BrokerError) as err:
        async for _ in client.chat_stream(
            {"model": "mock-slow", "messages": [{"role": "user", "content": "x"}]}, timeout=0.2
        ):
            pass
    assert err.value.status == 504
    assert err.value.detail.code == "deadline_exceeded"
    assert asyncio.get_running_loop().time() - started < 0.9  # not the 1 s answer


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


async def test_full_queue_is_503_no_capacity(stack: Stack) -> None:
    """A stream at nats.max_queued_requests refuses new requests: nothing queued is lost."""
    import msgspec

    from broker.nats.provision import ensure_bucket
    from broker.nats.subjects import WORKERS
    from broker.routing.presence import PresencePublisher
    from schemas.state import DeploymentStats

    config = load_config(stack.config_path)
    config = msgspec.structs.replace(
        config,
        nats=msgspec.structs.replace(
            config.nats, stream="PB_TINY", subject_prefix="tiny", max_queued_requests=2
        ),
    )
    broker = await BrokerClient.connect(config, stack.nats_url)
    # Announce "mock-gpt" on this stream's prefix without consuming: requests stay queued.
    presence = PresencePublisher(await ensure_bucket(broker.js, config, WORKERS), "idle", 60)
    presence.serve("mock-gpt", lambda: [DeploymentStats(name="idle", capacity=1, inflight=0)])
    await presence.start()
    for _ in range(100):  # until the client's directory has seen the heartbeat
        if broker.directory.is_served("mock-gpt"):
            break
        await asyncio.sleep(0.05)
    try:
        body = b'{"model": "mock-gpt", "messages": [{"role": "user", "content": "q"}]}'
        for _ in range(2):
            with pytest.raises(BrokerError) as waited:
                await broker.request("mock-gpt", body, timeout=0.2)
            assert waited.value.status == 504  # queued, nobody consumes
        with pytest.raises(BrokerError) as full:
            await broker.request("mock-gpt", body, timeout=0.2)
        assert full.value.status == 503 and full.value.detail.code == "no_capacity"
        info = await broker.js.stream_info("PB_TINY")
        assert info.state.messages == 2
    finally:
        await presence.stop()
        await broker.js.delete_stream("PB_TINY")
        await broker.close()
