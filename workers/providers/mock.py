"""The built-in mock provider: answers in-process, for `make run`, demos and benchmarks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from schemas.chat import (
    ChatCompletionRequest,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    UnknownFields,
    encoder,
)
from schemas.completions import CompletionRequest
from schemas.config import DeploymentConfig
from workers.mock import content as mock_content


class MockProvider:
    def __init__(self, deployment: DeploymentConfig) -> None:
        self.name = deployment.name
        self._model = deployment.model or deployment.name
        self._latency = deployment.mock_latency_ms / 1000.0

    forwards_unknown_fields = True  # an OpenAI-like stand-in: takes them, ignores them

    async def complete(
        self,
        request: ChatCompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> bytes:
        if self._latency:
            await asyncio.sleep(self._latency)
        return encoder.encode(mock_content.completion(request, self._model))

    async def stream(
        self,
        request: ChatCompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> AsyncIterator[bytes]:
        if self._latency:
            await asyncio.sleep(self._latency)
        for chunk in mock_content.chunks(request, self._model):
            yield encoder.encode(chunk)

    async def complete_text(
        self,
        request: CompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> bytes:
        if self._latency:
            await asyncio.sleep(self._latency)
        return encoder.encode(mock_content.text_completion(request, self._model))

    async def stream_text(
        self,
        request: CompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> AsyncIterator[bytes]:
        if self._latency:
            await asyncio.sleep(self._latency)
        for chunk in mock_content.text_chunks(request, self._model):
            yield encoder.encode(chunk)

    async def embed(
        self, request: EmbeddingRequest, traceparent: str | None = None
    ) -> EmbeddingList:
        """The mock upstream's stand-in embeddings: hashed trigrams, deterministic."""
        if self._latency:
            await asyncio.sleep(self._latency)
        texts = request.texts()
        dimensions = request.dimensions or mock_content.EMBEDDING_DIMENSIONS
        tokens = sum(len(text.split()) for text in texts)
        return EmbeddingList(
            data=[
                Embedding(index=i, embedding=mock_content.embedding(text, dimensions))
                for i, text in enumerate(texts)
            ],
            model=self._model,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )

    async def aclose(self) -> None:
        return None
