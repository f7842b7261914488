"""A fake Gemini API (``/v1beta/models/{model}:generateContent``,
``:streamGenerateContent?alt=sse`` and ``:batchEmbedContents``), after Google's reference.

It checks what the real API checks: a key in ``x-goog-api-key`` or ``?key=`` (none: 403
``PERMISSION_DENIED``; a wrong one: 400 ``INVALID_ARGUMENT`` with reason
``API_KEY_INVALID``), the camelCase request schema with no unknown names, roles ``user``
and ``model`` only, exactly one kind of data per part, and that each batch embedding
request names the model of the URL; then that google-genai's own types take the
request, and its ``GenerateContentResponse`` the fake's answers (``sdk_types``; base64
data that is not base64 is refused there). Errors come in Google's shape:
``{"error": {"code", "message", "status", "details"}}``.

Unscripted, it answers ``fake gemini reply to: <last user text>``; scripted answers are
``GenerateContentResponse`` bodies, or for streams the list of them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes import sdk_types
from tests.fakes.server import FakeUpstream, Scripted
from workers.mock import content as mock_content


class _Strict(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    pass


class Blob(_Strict):
    mime_type: str
    data: Annotated[str, Meta(min_length=1)]


class FileData(_Strict):
    file_uri: str
    mime_type: str | None = None


class FunctionCallPart(_Strict):
    name: str
    args: dict[str, Any] | None = None
    id: str | None = None


class FunctionResponsePart(_Strict):
    name: str
    response: dict[str, Any]
    id: str | None = None


class Part(_Strict):
    text: str | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None
    function_call: FunctionCallPart | None = None
    function_response: FunctionResponsePart | None = None
    thought: bool | None = None


class Content(_Strict):
    parts: Annotated[list[Part], Meta(min_length=1)]
    role: Literal["user", "model"] | None = None


class FunctionDeclaration(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Strict):
    function_declarations: list[FunctionDeclaration] | None = None


class FunctionCallingConfig(_Strict):
    mode: Literal["AUTO", "ANY", "NONE", "VALIDATED"]
    allowed_function_names: list[str] | None = None


class ToolConfig(_Strict):
    function_calling_config: FunctionCallingConfig


class GenerationConfig(_Strict):
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    candidate_count: Annotated[int, Meta(ge=1, le=8)] | None = None
    stop_sequences: Annotated[list[str], Meta(max_length=5)] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    response_mime_type: str | None = None
    response_schema: dict[str, Any] | None = None
    response_json_schema: dict[str, Any] | None = None


class SafetySetting(_Strict):
    category: str
    threshold: str


class GenerateContentRequest(_Strict):
    contents: Annotated[list[Content], Meta(min_length=1)]
    system_instruction: Content | None = None
    tools: list[Tool] | None = None
    tool_config: ToolConfig | None = None
    generation_config: GenerationConfig | None = None
    safety_settings: list[SafetySetting] | None = None


class EmbedContentRequest(_Strict):
    model: str
    content: Content
    output_dimensionality: int | None = None
    task_type: str | None = None
    title: str | None = None


class BatchEmbedContentsRequest(_Strict):
    requests: Annotated[list[EmbedContentRequest], Meta(min_length=1, max_length=100)]


_generate = msgspec.json.Decoder(GenerateContentRequest)
_embed = msgspec.json.Decoder(BatchEmbedContentsRequest)


def error(code: int, status: str, message: str, reason: str | None = None) -> JSONResponse:
    details = []
    if reason:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
            }
        )
    body = {"error": {"code": code, "message": message, "status": status, "details": details}}
    return JSONResponse(body, code)


def _check_parts(request: GenerateContentRequest) -> str | None:
    for i, content in enumerate(request.contents):
        for j, part in enumerate(content.parts):
            kinds = [
                name
                for name in (
                    "text",
                    "inline_data",
                    "file_data",
                    "function_call",
                    "function_response",
                )
                if getattr(part, name) is not None
            ]
            if len(kinds) != 1:
                return (
                    f"* GenerateContentRequest.contents[{i}].parts[{j}].data: "
                    "required oneof field 'data' must have one initialized field"
                )
    return None


def _last_user_text(request: GenerateContentRequest) -> str:
    for content in reversed(request.contents):
        if content.role in (None, "user"):
            texts = [p.text for p in content.parts if p.text is not None]
            if texts:
                return " ".join(texts)
    return ""


def default_response(request: GenerateContentRequest, model: str) -> dict[str, Any]:
    text = f"fake gemini reply to: {_last_user_text(request)}"
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 8,
            "candidatesTokenCount": len(text.split()),
            "totalTokenCount": 8 + len(text.split()),
        },
        "modelVersion": model,
        "responseId": "resp-fake-1",
    }


def response_pieces(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A text answer as a stream: one piece per word, usage and finish on the last."""
    candidate = response["candidates"][0]
    words = candidate["content"]["parts"][0]["text"].split(" ")
    pieces = []
    for n, word in enumerate(words):
        last = n == len(words) - 1
        part = {"text": word if last else word + " "}
        piece: dict[str, Any] = {
            "candidates": [{"content": {"role": "model", "parts": [part]}, "index": 0}],
            "modelVersion": response["modelVersion"],
            "responseId": response["responseId"],
        }
        if last:
            piece["candidates"][0]["finishReason"] = candidate["finishReason"]
            piece["usageMetadata"] = response["usageMetadata"]
        pieces.append(piece)
    return pieces


async def _sse(pieces: list[Any]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield f"data: {json.dumps(piece)}\r\n\r\n".encode()


def create_app(fake: FakeUpstream) -> Starlette:
    async def models(request: Request) -> Response:
        raw = await request.body()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = None
        await fake.record(request, parsed)
        model, _, method = request.path_params["rest"].partition(":")
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if key is None:
            return error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity "
                "to call this API.",
            )
        if key != fake.api_key:
            return error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                "API_KEY_INVALID",
            )
        if method == "batchEmbedContents":
            return _embeddings(raw, model)
        if method not in ("generateContent", "streamGenerateContent"):
            return error(404, "NOT_FOUND", f"Method {method!r} not found.")
        try:
            body = _generate.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return error(400, "INVALID_ARGUMENT", f"Invalid JSON payload received. {exc}")
        problem = _check_parts(body) or sdk_types.gemini_request_problem(parsed)
        if problem:
            return error(400, "INVALID_ARGUMENT", problem)
        scripted = fake.next_scripted()
        if scripted is not None and scripted.status != 200:
            return JSONResponse(scripted.body, scripted.status, headers=scripted.headers)
        if method == "streamGenerateContent":
            if request.query_params.get("alt") != "sse":
                return error(400, "INVALID_ARGUMENT", "this fake streams with alt=sse only")
            if scripted is not None and scripted.events is not None:
                pieces = scripted.events
            else:
                if scripted:
                    pieces = response_pieces(scripted.body)
                else:
                    answer = sdk_types.gemini_answer(default_response(body, model))
                    pieces = [sdk_types.gemini_answer(p) for p in response_pieces(answer)]
            return StreamingResponse(_sse(pieces), media_type="text/event-stream")
        if scripted is None:
            scripted = Scripted(body=sdk_types.gemini_answer(default_response(body, model)))
        return JSONResponse(scripted.body)

    def _embeddings(raw: bytes, model: str) -> Response:
        try:
            body = _embed.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return error(400, "INVALID_ARGUMENT", f"Invalid JSON payload received. {exc}")
        embeddings = []
        for i, item in enumerate(body.requests):
            if item.model != f"models/{model}":
                return error(
                    400,
                    "INVALID_ARGUMENT",
                    f"* BatchEmbedContentsRequest.requests[{i}].model: model `{item.model}` "
                    f"does not match the request's model `models/{model}`",
                )
            text = " ".join(p.text or "" for p in item.content.parts)
            dimensions = item.output_dimensionality or 8
            embeddings.append({"values": mock_content.embedding(text, dimensions)})
        return JSONResponse(sdk_types.gemini_embeddings({"embeddings": embeddings}))

    return Starlette(routes=[Route("/v1beta/models/{rest:path}", models, methods=["POST"])])
