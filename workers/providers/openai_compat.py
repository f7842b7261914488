"""OpenAI-compatible upstreams (OpenAI, vLLM, Ollama, Groq, OpenRouter, mock-upstream...).

One ``httpx.AsyncClient`` per deployment: a keep-alive connection pool sized to the
deployment's concurrency, so no request pays for connection set-up. Responses are
validated against the schema and relayed as the upstream sent them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import msgspec

from schemas.chat import ChatCompletionRequest, chunk_decoder, completion_decoder, encoder
from schemas.config import DeploymentConfig
from schemas.errors import BrokerError, error_decoder, upstream_error


class OpenAICompatProvider:
    def __init__(
        self,
        deployment: DeploymentConfig,
        api_key: str | None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = deployment.name
        self._model = deployment.model or deployment.name
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        assert deployment.base_url is not None
        self._client = httpx.AsyncClient(
            base_url=deployment.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(
                connect=deployment.connect_timeout_s,
                read=deployment.read_timeout_s,
                write=deployment.read_timeout_s,
                pool=deployment.read_timeout_s,
            ),
            limits=httpx.Limits(
                max_connections=deployment.max_concurrency,
                max_keepalive_connections=deployment.max_concurrency,
            ),
            transport=transport,
        )

    def _body(self, request: ChatCompletionRequest) -> bytes:
        return encoder.encode(msgspec.structs.replace(request, model=self._model))

    async def complete(self, request: ChatCompletionRequest) -> bytes:
        try:
            response = await self._client.post(
                "/chat/completions",
                content=self._body(request),
                headers={"Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if response.status_code >= 400:
            raise self._status_error(response.status_code, response.content)
        try:
            completion_decoder.decode(response.content)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise upstream_error(502, self.name, f"invalid response body: {exc}") from None
        return response.content

    async def stream(self, request: ChatCompletionRequest) -> AsyncIterator[bytes]:
        try:
            async with self._client.stream(
                "POST",
                "/chat/completions",
                content=self._body(request),
                headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
            ) as response:
                if response.status_code >= 400:
                    raise self._status_error(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, event: lines
                    data = line[5:].strip().encode()
                    if data == b"[DONE]":
                        return
                    yield self._checked_chunk(data)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None

    def _checked_chunk(self, data: bytes) -> bytes:
        try:
            chunk_decoder.decode(data)
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

    def _status_error(self, status: int, body: bytes) -> BrokerError:
        try:
            detail = error_decoder.decode(body).error
            return upstream_error(
                status, self.name, f"HTTP {status}: {detail.message}", code=detail.code
            )
        except (msgspec.ValidationError, msgspec.DecodeError):
            text = body[:300].decode(errors="replace").strip() or "(empty body)"
            return upstream_error(status, self.name, f"HTTP {status}: {text}")

    def _transport_error(self, exc: httpx.HTTPError) -> BrokerError:
        url = str(self._client.base_url)
        if isinstance(exc, httpx.TimeoutException):
            return upstream_error(
                504,
                self.name,
                f"timed out talking to {url} ({type(exc).__name__})",
                code="upstream_timeout",
            )
        if isinstance(exc, httpx.ConnectError):
            return upstream_error(
                502, self.name, f"cannot connect to {url}: {exc}", code="upstream_unreachable"
            )
        return upstream_error(
            502,
            self.name,
            f"transport error with {url}: {type(exc).__name__}: {exc}",
            code="upstream_transport_error",
        )

    async def aclose(self) -> None:
        await self._client.aclose()
