"""A fake Azure OpenAI resource: ``/openai/deployments/{deployment}/chat/completions``,
``.../completions`` (legacy text) and ``.../embeddings``, with the required
``api-version`` query parameter and ``api-key`` header.

Bodies are the OpenAI format (validated with the broker's own schema); answers come from
``workers.mock.content``, reporting the model behind the deployment. Azure's refusals are
imitated: no ``api-version`` is a 404, a wrong key a 401, and a scripted content-filter
error carries Azure's ``content_filter`` code and ``innererror``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from schemas.chat import (
    ChatCompletionRequest,
    Embedding,
    EmbeddingList,
    EmbeddingUsage,
    embedding_request_decoder,
    encoder,
    request_decoder,
)
from schemas.completions import request_fields as text_request_fields
from tests.fakes.server import FakeUpstream
from workers.mock import content as mock_content

API_VERSIONS = ("2024-10-21", "2024-06-01", "2025-01-01-preview")
UNDERLYING_MODEL = "gpt-4o-2024-08-06"


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status)


CONTENT_FILTER_ERROR = {
    "error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
        "content management policy. Please modify your prompt and retry.",
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {"violence": {"filtered": True, "severity": "high"}},
        },
    }
}


async def _sse(request: ChatCompletionRequest) -> AsyncIterator[bytes]:
    for chunk in mock_content.chunks(request, UNDERLYING_MODEL):
        yield b"data: " + encoder.encode(chunk) + b"\n\n"
    yield b"data: [DONE]\n\n"


def create_app(fake: FakeUpstream) -> Starlette:
    async def checked(request: Request) -> tuple[bytes, Response | None]:
        raw = await request.body()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = None
        await fake.record(request, parsed)
        if request.query_params.get("api-version") not in API_VERSIONS:
            return raw, error(404, "404", "Resource not found")
        if request.headers.get("api-key") != fake.api_key:
            return raw, error(
                401,
                "401",
                "Access denied due to invalid subscription key or wrong API endpoint. Make "
                "sure to provide a valid key for an active subscription and use a correct "
                "regional API endpoint for your resource.",
            )
        scripted = fake.next_scripted()
        if scripted is not None:
            return raw, JSONResponse(scripted.body, scripted.status, headers=scripted.headers)
        return raw, None

    async def chat(request: Request) -> Response:
        raw, refused = await checked(request)
        if refused is not None:
            return refused
        try:
            body = request_decoder.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return error(400, "invalid_request", str(exc))
        if body.stream:
            return StreamingResponse(_sse(body), media_type="text/event-stream")
        completion = mock_content.completion(body, UNDERLYING_MODEL)
        return Response(encoder.encode(completion), media_type="application/json")

    async def text(request: Request) -> Response:
        raw, refused = await checked(request)
        if refused is not None:
            return refused
        try:
            body, _ = text_request_fields.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return error(400, "invalid_request", str(exc))
        completion = mock_content.text_completion(body, UNDERLYING_MODEL)
        return Response(encoder.encode(completion), media_type="application/json")

    async def embeddings(request: Request) -> Response:
        raw, refused = await checked(request)
        if refused is not None:
            return refused
        try:
            body = embedding_request_decoder.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return error(400, "invalid_request", str(exc))
        texts = body.texts()
        answer = EmbeddingList(
            data=[
                Embedding(index=i, embedding=mock_content.embedding(t, 4))
                for i, t in enumerate(texts)
            ],
            model="text-embedding-3-small",
            usage=EmbeddingUsage(prompt_tokens=len(texts), total_tokens=len(texts)),
        )
        return Response(encoder.encode(answer), media_type="application/json")

    return Starlette(
        routes=[
            Route("/openai/deployments/{name}/chat/completions", chat, methods=["POST"]),
            Route("/openai/deployments/{name}/completions", text, methods=["POST"]),
            Route("/openai/deployments/{name}/embeddings", embeddings, methods=["POST"]),
        ]
    )
