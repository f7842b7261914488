"""A fake Anthropic Messages API (``POST /v1/messages``), after Anthropic's API reference.

It checks what the real API checks: the ``x-api-key`` and ``anthropic-version`` headers,
the request schema (required ``model``/``max_tokens``/``messages``, roles ``user`` and
``assistant`` only, known block types, non-empty text, no unknown fields), and that each
``tool_result`` answers a ``tool_use`` of the assistant turn just before; then that the
anthropic SDK's own request params take it, and its ``Message`` type its answers
(``sdk_types``). Errors come in
Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``.

Unscripted, it answers ``fake anthropic reply to: <last user text>``; scripted answers
are full ``message`` objects (streamed as the matching event sequence) or raw events.
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

VERSIONS = ("2023-06-01", "2023-01-01")


class _Strict(msgspec.Struct, forbid_unknown_fields=True):
    pass


class Base64Source(_Strict, tag_field="type", tag="base64"):
    media_type: str
    data: Annotated[str, Meta(min_length=1)]


class URLSource(_Strict, tag_field="type", tag="url"):
    url: str


class TextBlock(_Strict, tag_field="type", tag="text"):
    text: Annotated[str, Meta(min_length=1)]
    cache_control: dict[str, Any] | None = None


class ImageBlock(_Strict, tag_field="type", tag="image"):
    source: Base64Source | URLSource


class DocumentBlock(_Strict, tag_field="type", tag="document"):
    source: Base64Source | URLSource


class ToolUseBlock(_Strict, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Strict, tag_field="type", tag="tool_result"):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock] = ""
    is_error: bool | None = None


Block = TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock


class MessageParam(_Strict):
    role: Literal["user", "assistant"]
    content: str | Annotated[list[Block], Meta(min_length=1)]


class Tool(_Strict):
    name: str
    input_schema: dict[str, Any]
    description: str | None = None


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(_Strict):
    user_id: str | None = None


class MessagesRequest(_Strict):
    model: str
    max_tokens: Annotated[int, Meta(ge=1)]
    messages: Annotated[list[MessageParam], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None


_decoder = msgspec.json.Decoder(MessagesRequest)


def error(status: int, type: str, message: str) -> JSONResponse:
    body = {"type": "error", "error": {"type": type, "message": message}}
    return JSONResponse(body, status, headers={"request-id": "req_fake"})


def _check_tool_results(request: MessagesRequest) -> str | None:
    previous: MessageParam | None = None
    for i, message in enumerate(request.messages):
        if isinstance(message.content, list):
            results = [b for b in message.content if isinstance(b, ToolResultBlock)]
            if results:
                asked = set()
                if previous is not None and previous.role == "assistant":
                    if isinstance(previous.content, list):
                        asked = {b.id for b in previous.content if isinstance(b, ToolUseBlock)}
                for block in results:
                    if block.tool_use_id not in asked:
                        return (
                            f"messages.{i}.content: unexpected `tool_use_id` found in "
                            "`tool_result` blocks: each `tool_result` block must have a "
                            "corresponding `tool_use` block in the previous message."
                        )
        previous = message
    return None


def _last_user_text(request: MessagesRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "user":
            if isinstance(message.content, str):
                return message.content
            return " ".join(b.text for b in message.content if isinstance(b, TextBlock))
    return ""


def default_message(request: MessagesRequest) -> dict[str, Any]:
    text = f"fake anthropic reply to: {_last_user_text(request)}"
    return {
        "id": "msg_fake0001",
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": len(text.split())},
    }


def message_events(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The event sequence that streams ``message``: text in word pieces, tool input in two."""
    usage = message["usage"]
    start = message | {
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1},
    }
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}, {"type": "ping"}]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                }
            )
            words = block["text"].split(" ")
            for n, word in enumerate(words):
                piece = word if n == len(words) - 1 else word + " "
                delta = {"type": "text_delta", "text": piece}
                events.append({"type": "content_block_delta", "index": index, "delta": delta})
        else:
            opening = block | {"input": {}}
            events.append({"type": "content_block_start", "index": index, "content_block": opening})
            arguments = json.dumps(block["input"])
            half = len(arguments) // 2
            for piece in (arguments[:half], arguments[half:]):
                delta = {"type": "input_json_delta", "partial_json": piece}
                events.append({"type": "content_block_delta", "index": index, "delta": delta})
        events.append({"type": "content_block_stop", "index": index})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        }
    )
    events.append({"type": "message_stop"})
    return events


async def _sse(events: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    for event in events:
        yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def create_app(fake: FakeUpstream) -> Starlette:
    async def messages(request: Request) -> Response:
        raw = await request.body()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = None
        await fake.record(request, parsed)
        if request.headers.get("x-api-key") != fake.api_key:
            return error(401, "authentication_error", "invalid x-api-key")
        version = request.headers.get("anthropic-version")
        if version is None:
            return error(400, "invalid_request_error", "anthropic-version: header is required")
        if version not in VERSIONS:
            return error(400, "invalid_request_error", f"anthropic-version: invalid {version!r}")
        try:
            body = _decoder.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return error(400, "invalid_request_error", str(exc))
        problem = _check_tool_results(body) or sdk_types.anthropic_request_problem(parsed)
        if problem:
            return error(400, "invalid_request_error", problem)
        scripted = fake.next_scripted() or Scripted(
            body=sdk_types.anthropic_answer(default_message(body))
        )
        if scripted.status != 200:
            return JSONResponse(scripted.body, scripted.status, headers=scripted.headers)
        if body.stream:
            events = scripted.events or sdk_types.anthropic_events(message_events(scripted.body))
            return StreamingResponse(_sse(events), media_type="text/event-stream")
        return JSONResponse(scripted.body, headers=scripted.headers)

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])
