"""One Responses request served by a chat upstream: the chat request it means, and its
answer (or its chunks) as the response object (or the typed stream events).

The worker uses it for deployments with ``responses_api: chat`` (Anthropic, Gemini, and
OpenAI-compatible servers without the API), so one model can mix native and translated
deployments and fail over between them. Pure: bytes in, bytes out, no I/O.
"""

from __future__ import annotations

import msgspec

from broker.responses import translation
from schemas.chat import ChatCompletionRequest, chunk_decoder, completion_decoder, encoder
from schemas.responses import ResponseRequest


class ChatTurn:
    def __init__(self, request: ResponseRequest) -> None:
        """``request`` is stateless (the ingress expanded ``previous_response_id``);
        its id is provisional: the ingress names the response it stores."""
        self.chat: ChatCompletionRequest = translation.to_chat(request)
        unstored = msgspec.structs.replace(request, store=False)  # nothing on the bus keeps it
        base = translation.shell(unstored, translation.new_id("resp"), translation.created_now())
        self._events = translation.ResponseEvents(base)

    def body(self, completion: bytes) -> bytes:
        """A ``chat.completion`` body as the finished response object."""
        decoded = completion_decoder.decode(completion)
        return encoder.encode(translation.to_response(decoded, self._events.base))

    def start(self) -> list[bytes]:
        """The events that open the stream, before any chunk."""
        return [encoder.encode(event) for event in self._events.start()]

    def chunk(self, chunk: bytes) -> list[bytes]:
        """A ``chat.completion.chunk`` body as the events it means (often one, at times none)."""
        return [encoder.encode(event) for event in self._events.chunk(chunk_decoder.decode(chunk))]

    def finish(self) -> list[bytes]:
        """The closing events, ``response.completed`` (or ``.incomplete``) last."""
        return [encoder.encode(event) for event in self._events.finish()]
