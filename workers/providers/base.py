"""The interface every provider adapter implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from schemas.chat import ChatCompletionRequest, EmbeddingList, EmbeddingRequest, UnknownFields


class Provider(Protocol):
    """A provider answers with OpenAI JSON bodies and raises ``BrokerError`` on failure."""

    name: str
    # Does the upstream take request fields promptbus does not define (``unknown``, as
    # the caller sent them)? OpenAI-compatible APIs do; native adapters refuse them.
    forwards_unknown_fields: bool

    async def complete(
        self,
        request: ChatCompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> bytes:
        """The ``chat.completion`` body for a non-streamed request.

        ``traceparent`` is the W3C trace context to send along, when the request has one.
        """
        ...

    def stream(
        self,
        request: ChatCompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> AsyncIterator[bytes]:
        """The ``chat.completion.chunk`` bodies of a streamed request, in order."""
        ...

    async def embed(
        self, request: EmbeddingRequest, traceparent: str | None = None
    ) -> EmbeddingList:
        """Embeddings as floats (the worker encodes base64 itself); providers without an
        embeddings API raise a 400 ``BrokerError``."""
        ...

    async def aclose(self) -> None: ...
