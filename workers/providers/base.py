"""The interface every provider adapter implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from schemas.chat import ChatCompletionRequest, EmbeddingList, EmbeddingRequest, UnknownFields
from schemas.completions import CompletionRequest
from schemas.errors import no_text_completions
from schemas.responses import ResponseRequest


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

    async def complete_text(
        self,
        request: CompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> bytes:
        """The ``text_completion`` body of a legacy completions request; providers
        without that API raise a 400 ``BrokerError`` (``no_text_completions``)."""
        ...

    def stream_text(
        self,
        request: CompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> AsyncIterator[bytes]:
        """The ``text_completion`` chunk bodies of a streamed legacy completion, in order."""
        ...

    async def embed(
        self, request: EmbeddingRequest, traceparent: str | None = None
    ) -> EmbeddingList:
        """Embeddings as floats (the worker encodes base64 itself); providers without an
        embeddings API raise a 400 ``BrokerError``."""
        ...

    async def aclose(self) -> None: ...


class WithoutTextCompletions:
    """Mixed into adapters whose API has no legacy text completions (Anthropic, Gemini):
    a 400 naming the provider, before any upstream call."""

    api_name: str  # the provider's API, as errors name it

    async def complete_text(
        self,
        request: CompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> bytes:
        raise no_text_completions(request.model, self.api_name)

    async def stream_text(
        self,
        request: CompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> AsyncIterator[bytes]:
        raise no_text_completions(request.model, self.api_name)
        yield b""  # an async generator, like every stream


@runtime_checkable
class NativeResponses(Protocol):
    """An adapter whose upstream serves the Responses API itself
    (``responses_api: native``); the others get the chat request it means."""

    async def respond(self, request: ResponseRequest, traceparent: str | None = None) -> bytes:
        """The upstream's response object (the upstream stores nothing)."""
        ...

    def stream_responses(
        self, request: ResponseRequest, traceparent: str | None = None
    ) -> AsyncIterator[bytes]:
        """The upstream's typed stream events, in order."""
        ...
