"""The exact response cache: hits, misses, what is never cached, TTL, Cache-Control, and
a NATS-backed cache shared by two processes."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from broker.client import BrokerClient
from schemas.settings import load_config
from tests.conftest import Stack


def ask(
    stack: Stack, text: str, headers: dict[str, str] | None = None, **extra: Any
) -> httpx.Response:
    body = {"model": "upstream-gpt", "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(
        f"{stack.ingress}/v1/chat/completions", json=body, headers=headers or {}, timeout=20
    )


def fresh() -> str:
    return f"cache test {uuid.uuid4().hex}"


def test_deterministic_request_is_answered_from_cache(stack: Stack) -> None:
    text = fresh()
    before = stack.upstream_requests()
    first = ask(stack, text, temperature=0)
    second = ask(stack, text, temperature=0)
    assert first.headers["x-promptbus-cache"] == "miss"
    assert second.headers["x-promptbus-cache"] == "hit"
    assert second.json() == first.json()  # same id, same everything
    assert second.headers["x-promptbus-deployment"] == "fake-openai"
    assert int(second.headers["age"]) >= 0
    assert stack.upstream_requests() == before + 1


def test_seeded_request_is_cached_and_parameters_matter(stack: Stack) -> None:
    text = fresh()
    before = stack.upstream_requests()
    assert ask(stack, text, seed=1).headers["x-promptbus-cache"] == "miss"
    assert ask(stack, text, seed=1).headers["x-promptbus-cache"] == "hit"
    assert ask(stack, text, seed=2).headers["x-promptbus-cache"] == "miss"
    assert ask(stack, text, seed=1, max_tokens=3).headers["x-promptbus-cache"] == "miss"
    # fields that do not change the output do not split the cache
    assert ask(stack, text, seed=1, user="someone").headers["x-promptbus-cache"] == "hit"
    assert stack.upstream_requests() == before + 3


def test_non_deterministic_and_streamed_requests_are_not_cached(stack: Stack) -> None:
    text = fresh()
    before = stack.upstream_requests()
    for _ in range(2):
        response = ask(stack, text, temperature=0.7)
        assert "x-promptbus-cache" not in response.headers
    for _ in range(2):
        with httpx.stream(
            "POST",
            f"{stack.ingress}/v1/chat/completions",
            json={
                "model": "upstream-gpt",
                "stream": True,
                "temperature": 0,
                "messages": [{"role": "user", "content": text}],
            },
        ) as response:
            assert response.status_code == 200 and "x-promptbus-cache" not in response.headers
            response.read()
    assert stack.upstream_requests() == before + 4


def test_errors_are_not_cached(stack: Stack) -> None:
    text = fresh()
    assert ask(stack, text, temperature=0, metadata={"mock_status": "503"}).status_code == 503
    assert ask(stack, text, temperature=0).headers["x-promptbus-cache"] == "miss"


def test_cache_control_is_honoured(stack: Stack) -> None:
    text = fresh()
    before = stack.upstream_requests()
    assert ask(stack, text, temperature=0).headers["x-promptbus-cache"] == "miss"
    no_cache = ask(stack, text, {"cache-control": "no-cache"}, temperature=0)
    assert no_cache.headers["x-promptbus-cache"] == "miss"  # looked past the cache
    assert (
        ask(stack, text, {"cache-control": "max-age=60"}, temperature=0).headers[
            "x-promptbus-cache"
        ]
        == "hit"
    )
    time.sleep(1.1)
    assert (
        ask(stack, text, {"cache-control": "max-age=1"}, temperature=0).headers["x-promptbus-cache"]
        == "miss"
    )
    stored_not = fresh()
    assert (
        ask(stack, stored_not, {"cache-control": "no-store"}, temperature=0).headers[
            "x-promptbus-cache"
        ]
        == "miss"
    )
    assert ask(stack, stored_not, temperature=0).headers["x-promptbus-cache"] == "miss"
    assert stack.upstream_requests() == before + 5


def test_per_model_ttl(stack: Stack) -> None:
    body = {
        "model": "short-cache",
        "temperature": 0,
        "messages": [{"role": "user", "content": fresh()}],
    }
    url = f"{stack.ingress}/v1/chat/completions"
    assert httpx.post(url, json=body).headers["x-promptbus-cache"] == "miss"
    assert httpx.post(url, json=body).headers["x-promptbus-cache"] == "hit"
    time.sleep(1.2)  # cache_ttl_s: 1
    assert httpx.post(url, json=body).headers["x-promptbus-cache"] == "miss"


@pytest.fixture
async def nats_cache_clients(stack: Stack) -> AsyncIterator[tuple[BrokerClient, BrokerClient]]:
    config = load_config(stack.config_path)
    config = msgspec.structs.replace(
        config, cache=msgspec.structs.replace(config.cache, backend="nats")
    )
    first = await BrokerClient.connect(config, stack.nats_url, name="cache-a")
    second = await BrokerClient.connect(config, stack.nats_url, name="cache-b")
    yield first, second
    await first.close()
    await second.close()


async def test_nats_backend_is_shared_between_processes(
    stack: Stack, nats_cache_clients: tuple[BrokerClient, BrokerClient]
) -> None:
    first, second = nats_cache_clients
    request = {
        "model": "upstream-gpt",
        "temperature": 0,
        "messages": [{"role": "user", "content": fresh()}],
    }
    before = stack.upstream_requests()
    answer = await first.chat(request)
    again = await second.chat(request)  # another client, another in-memory state: same answer
    assert again.id == answer.id
    assert stack.upstream_requests() == before + 1


async def test_semantic_cache_serves_prompts_close_in_meaning(stack: Stack) -> None:
    from schemas.chat import ChatCompletionRequest, encoder

    config = load_config(stack.config_path)
    semantic = msgspec.structs.replace(
        config.cache.semantic,
        enabled=True,
        threshold=0.9,
        embeddings_base_url=f"{stack.upstream}/v1",  # the fake upstream's /embeddings
    )
    config = msgspec.structs.replace(
        config, cache=msgspec.structs.replace(config.cache, semantic=semantic)
    )
    client = await BrokerClient.connect(config, stack.nats_url, name="semantic")
    system = f"answer briefly {uuid.uuid4().hex}"  # a bucket of this test's own

    async def ask_semantic(text: str, system_prompt: str = system) -> tuple[str, bytes]:
        request = msgspec.convert(
            {
                "model": "upstream-gpt",
                "temperature": 0,
                "messages": [
                    {"role": "system", "content": system_prompt},
                    {"role": "user", "content": text},
                ],
            },
            ChatCompletionRequest,
        )
        reply = await client.request("upstream-gpt", encoder.encode(request), parsed=request)
        assert reply.status == 200
        return reply.headers["Pb-Cache"], reply.body

    try:
        before = stack.upstream_requests()
        verdict, first = await ask_semantic("What is the capital of France?")
        assert verdict == "miss"
        verdict, second = await ask_semantic("what is the capital city of france")
        assert verdict == "semantic-hit" and second == first
        verdict, _ = await ask_semantic("How do I bake sourdough bread?")
        assert verdict == "miss"
        verdict, _ = await ask_semantic(
            "what is the capital city of france", "a different system prompt"
        )
        assert verdict == "miss"  # everything but the last user message must match exactly
        chats = stack.upstream_requests() - before - 4  # minus the 4 embedding calls
        assert chats == 3
    finally:
        await client.close()


async def test_streams_read_the_cache_when_configured(stack: Stack) -> None:
    config = load_config(stack.config_path)
    config = msgspec.structs.replace(
        config, cache=msgspec.structs.replace(config.cache, streams=True)
    )
    client = await BrokerClient.connect(config, stack.nats_url, name="stream-cache")
    request = {
        "model": "upstream-gpt",
        "temperature": 0,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": fresh()}],
    }
    try:
        before = stack.upstream_requests()
        answer = await client.chat(request)
        chunks = [chunk async for chunk in client.chat_stream(request)]
        assert stack.upstream_requests() == before + 1  # the stream came from the cache
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == answer.choices[0].message.content
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert (
            chunks[-1].usage is not None
            and chunks[-1].usage.total_tokens == answer.usage.total_tokens
        )  # type: ignore[union-attr]
    finally:
        await client.close()


def test_cache_keys_are_namespaced() -> None:
    """Tenants never share entries unless configured to: the key includes the namespace."""
    from broker.cache.exact import BoundedMemoryCache, ResponseCache
    from schemas.chat import ChatCompletionRequest
    from schemas.config import CacheConfig, ModelConfig

    cache = ResponseCache(CacheConfig(), BoundedMemoryCache(10, 10_000))
    model = msgspec.convert({"model_name": "m", "deployments": [{"provider": "mock"}]}, ModelConfig)
    request = msgspec.convert(
        {"model": "m", "seed": 1, "messages": [{"role": "user", "content": "x"}]},
        ChatCompletionRequest,
    )
    assert cache.key(request, model, "tenant-a") != cache.key(request, model, "tenant-b")
    assert cache.key(request, model, "tenant-a") == cache.key(request, model, "tenant-a")


async def test_memory_backend_evicts_least_recently_used() -> None:
    from broker.cache.exact import BoundedMemoryCache

    backend = BoundedMemoryCache(max_entries=2, max_bytes=10_000)
    await backend.set("a", b"1")
    await backend.set("b", b"2")
    assert await backend.get("a") == b"1"  # a is now the most recent
    await backend.set("c", b"3")
    assert await backend.get("b") is None and await backend.get("a") == b"1"
    small = BoundedMemoryCache(max_entries=100, max_bytes=5)
    await small.set("x", b"123")
    await small.set("y", b"456")  # 6 bytes > 5: x goes
    assert await small.get("x") is None and await small.get("y") == b"456"
