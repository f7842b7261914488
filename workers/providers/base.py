"""The interface every provider adapter implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from schemas.chat import ChatCompletionRequest


class Provider(Protocol):
    """A provider answers with OpenAI JSON bodies and raises ``BrokerError`` on failure."""

    name: str

    async def complete(self, request: ChatCompletionRequest) -> bytes:
        """The ``chat.completion`` body for a non-streamed request."""
        ...

    def stream(self, request: ChatCompletionRequest) -> AsyncIterator[bytes]:
        """The ``chat.completion.chunk`` bodies of a streamed request, in order."""
        ...

    async def aclose(self) -> None: ...
