"""OpenAI-compatible upstreams (OpenAI, vLLM, Ollama, Groq, OpenRouter, mock-upstream...).

Its HTTP side (the pool for answers read whole, aiohttp's session for streams,
transport errors) is ``workers/providers/http.py``'s ``Upstream``, as the translating
adapters' is.
Responses are validated against the schema and relayed as the upstream sent them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from schemas.chat import (
    ChatCompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    UnknownFields,
    chunk_decoder,
    completion_decoder,
    embedding_list_decoder,
    encoder,
    with_fields,
)
from schemas.completions import CompletionRequest, text_completion_decoder
from schemas.config import DeploymentConfig
from schemas.errors import error_decoder, upstream_error
from schemas.responses import ResponseRequest, event_head_decoder, response_shape_decoder
from workers.providers.errors import classify
from workers.providers.http import Upstream


class OpenAICompatProvider:
    def __init__(self, deployment: DeploymentConfig, api_key: str | None) -> None:
        assert deployment.base_url is not None
        self.name = deployment.name
        self._model = deployment.model or deployment.name
        self._base_url = deployment.base_url.rstrip("/")
        self._url = f"{self._base_url}/chat/completions"
        self._embeddings_url = f"{self._base_url}/embeddings"
        self._text_url = f"{self._base_url}/completions"
        self._responses_url = f"{self._base_url}/responses"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._stream_headers = self._headers | {"Accept": "text/event-stream"}
        # The HTTP side every adapter shares: the pool for answers read whole, aiohttp's
        # session for streams, failures as upstream errors.
        self._upstream = Upstream(deployment, functools.partial(classify, self.name))

    forwards_unknown_fields = True  # vLLM's top_k, OpenRouter's provider, Ollama's options

    def _body(
        self, request: ChatCompletionRequest | CompletionRequest, unknown: UnknownFields | None
    ) -> bytes:
        body = encoder.encode(msgspec.structs.replace(request, model=self._model))
        return with_fields(body, unknown) if unknown else body

    async def complete(
        self,
        request: ChatCompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> bytes:
        body = await self._post(self._url, self._body(request, unknown), traceparent)
        return self._checked(body, completion_decoder, "response body")

    def stream(
        self,
        request: ChatCompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> AsyncIterator[bytes]:
        return self._events(self._url, self._body(request, unknown), traceparent, chunk_decoder)

    async def complete_text(
        self,
        request: CompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> bytes:
        body = await self._post(self._text_url, self._body(request, unknown), traceparent)
        return self._checked(body, text_completion_decoder, "text completion body")

    def stream_text(
        self,
        request: CompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> AsyncIterator[bytes]:
        body = self._body(request, unknown)
        return self._events(self._text_url, body, traceparent, text_completion_decoder)

    async def respond(self, request: ResponseRequest, traceparent: str | None = None) -> bytes:
        """The response object of a Responses request, from the upstream's own API."""
        body = await self._post(self._responses_url, self._stateless(request), traceparent)
        return self._checked(body, response_shape_decoder, "response object")

    async def stream_responses(
        self, request: ResponseRequest, traceparent: str | None = None
    ) -> AsyncIterator[bytes]:
        """The typed events of a streamed Responses request, as the upstream sent them;
        an ``error`` event fails the stream like an error mid-chat-stream."""
        body = self._stateless(request)
        async for event in self._events(self._responses_url, body, traceparent, event_head_decoder):
            if b'"type":"error"' in event and event_head_decoder.decode(event).type == "error":
                failure = msgspec.json.decode(event)
                raise upstream_error(
                    502,
                    self.name,
                    f"error mid-stream: {failure.get('message')}",
                    code=failure.get("code"),
                )
            yield event

    def _stateless(self, request: ResponseRequest) -> bytes:
        """promptbus keeps the conversation (in NATS, per tenant): the upstream keeps nothing."""
        return encoder.encode(msgspec.structs.replace(request, model=self._model, store=False))

    async def _post(self, url: str, body: bytes, traceparent: str | None) -> bytes:
        """The upstream's answer to one JSON POST; its errors classified."""
        headers = (
            self._headers if traceparent is None else self._headers | {"traceparent": traceparent}
        )
        return await self._upstream.post(url, body, headers)

    async def _events(
        self,
        url: str,
        body: bytes,
        traceparent: str | None,
        decoder: msgspec.json.Decoder[Any],
    ) -> AsyncIterator[bytes]:
        """The ``data:`` payloads of a server-sent event stream, each checked, until
        ``[DONE]``."""
        headers = self._stream_headers
        if traceparent is not None:
            headers = headers | {"traceparent": traceparent}
        async with contextlib.aclosing(self._upstream.post_events(url, body, headers)) as events:
            async for data in events:
                if data == b"[DONE]":
                    return
                yield self._checked_chunk(data, decoder)

    def _checked(self, body: bytes, decoder: msgspec.json.Decoder[Any], what: str) -> bytes:
        try:
            decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise upstream_error(502, self.name, f"invalid {what}: {exc}") from None
        return body

    async def embed(
        self, request: EmbeddingRequest, traceparent: str | None = None
    ) -> EmbeddingList:
        """Floats always: the worker encodes base64 itself when the caller asked for it."""
        body = encoder.encode(
            msgspec.structs.replace(request, model=self._model, encoding_format=None)
        )
        answer = await self._post(self._embeddings_url, body, traceparent)
        try:
            return embedding_list_decoder.decode(answer)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise upstream_error(502, self.name, f"invalid embeddings body: {exc}") from None

    def _checked_chunk(self, data: bytes, decoder: msgspec.json.Decoder[Any]) -> bytes:
        try:
            decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            try:
                detail = error_decoder.decode(data).error
            except (msgspec.ValidationError, msgspec.DecodeError):
                raise upstream_error(
                    502, self.name, f"invalid stream chunk: {data[:200]!r}"
                ) from None
            raise upstream_error(
                502, self.name, f"error mid-stream: {detail.message}", code=detail.code
            ) from None
        return data

    async def aclose(self) -> None:
        await self._upstream.aclose()
