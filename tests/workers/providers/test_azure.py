"""The Azure OpenAI adapter: Azure's URL scheme, api-version and api-key header, and its
errors mapped like OpenAI's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest

from schemas.chat import ChatCompletionRequest, EmbeddingRequest
from schemas.completions import CompletionRequest
from schemas.config import DeploymentConfig
from schemas.errors import BrokerError
from tests.fakes import azure as fake_azure
from tests.fakes.server import FakeUpstream, Scripted, ThreadedServer
from workers.providers.azure import AzureOpenAIProvider

KEY = "azure-key"


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeUpstream, str]]:
    upstream = FakeUpstream(KEY)
    server = ThreadedServer(fake_azure.create_app(upstream)).start()
    try:
        yield upstream, server.url
    finally:
        server.stop()


def make(url: str, key: str = KEY, version: str = "2024-10-21") -> AzureOpenAIProvider:
    deployment = DeploymentConfig(
        provider="azure", name="az", base_url=url, model="my-gpt4o", api_version=version
    )
    return AzureOpenAIProvider(deployment, key)


@pytest.fixture
async def provider(fake: tuple[FakeUpstream, str]) -> AsyncIterator[AzureOpenAIProvider]:
    upstream, url = fake
    upstream.reset()
    adapter = make(url)
    yield adapter
    await adapter.aclose()


def request(**fields: Any) -> ChatCompletionRequest:
    return msgspec.convert(
        {"model": "az", "messages": [{"role": "user", "content": "hi azure"}]} | fields,
        ChatCompletionRequest,
    )


async def test_url_scheme_and_key_header(
    provider: AzureOpenAIProvider, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    body = msgspec.json.decode(await provider.complete(request(temperature=0.2)))
    sent = upstream.last
    assert sent.path == "/openai/deployments/my-gpt4o/chat/completions"
    assert sent.query == {"api-version": "2024-10-21"}
    assert sent.headers["api-key"] == KEY and "authorization" not in sent.headers
    assert sent.body == {
        "model": "my-gpt4o",
        "messages": [{"role": "user", "content": "hi azure"}],
        "temperature": 0.2,
    }
    assert body["choices"][0]["message"]["content"] == "mock reply to: hi azure"
    assert body["model"] == fake_azure.UNDERLYING_MODEL  # relayed as Azure reported it


async def test_stream(provider: AzureOpenAIProvider, fake: tuple[FakeUpstream, str]) -> None:
    chunks = [msgspec.json.decode(c) async for c in provider.stream(request(stream=True))]
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"])
    assert text == "mock reply to: hi azure"
    assert fake[0].last.query == {"api-version": "2024-10-21"}


async def test_content_filter_and_auth_errors(
    provider: AzureOpenAIProvider, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, url = fake
    upstream.script(Scripted(status=400, body=fake_azure.CONTENT_FILTER_ERROR))
    with pytest.raises(BrokerError) as caught:
        await provider.complete(request())
    assert caught.value.status == 400 and caught.value.detail.code == "content_filtered"
    wrong = make(url, key="nope")
    try:
        with pytest.raises(BrokerError) as refused:
            await wrong.complete(request())
    finally:
        await wrong.aclose()
    assert refused.value.status == 401 and refused.value.detail.code == "upstream_auth_failed"
    unknown_version = make(url, version="1999-01-01")
    try:
        with pytest.raises(BrokerError) as missing:
            await unknown_version.complete(request())
    finally:
        await unknown_version.aclose()
    assert missing.value.status == 404 and "Resource not found" in missing.value.message


async def test_embeddings_url(
    provider: AzureOpenAIProvider, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    result = await provider.embed(
        EmbeddingRequest(model="az", input="hello", encoding_format="base64")
    )
    sent = upstream.last
    assert sent.path == "/openai/deployments/my-gpt4o/embeddings"
    assert sent.query == {"api-version": "2024-10-21"}
    assert sent.body == {"model": "my-gpt4o", "input": "hello"}  # floats asked for, always
    assert len(result.data) == 1 and len(result.data[0].embedding) == 4


async def test_text_completions_url(
    provider: AzureOpenAIProvider, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    answer = await provider.complete_text(CompletionRequest(model="az", prompt="legacy"))
    sent = upstream.last
    assert sent.path == "/openai/deployments/my-gpt4o/completions"
    assert sent.query == {"api-version": "2024-10-21"}
    assert sent.body == {"model": "my-gpt4o", "prompt": "legacy"}
    assert msgspec.json.decode(answer)["choices"][0]["text"] == "mock completion of: legacy"


def test_config_requires_base_url_and_api_version() -> None:
    with pytest.raises(ValueError, match="api_version"):
        DeploymentConfig(provider="azure", base_url="https://x.openai.azure.com")
    with pytest.raises(ValueError, match="base_url"):
        DeploymentConfig(provider="azure", api_version="2024-10-21")
