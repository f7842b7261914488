"""Anthropic's Messages API as an ingress (``POST /v1/messages``): the request, the
message object and its error body, as much as promptbus serves (docs/apis.md).

Content blocks are one flat Struct with a ``type``, as in schemas/responses.py: one
Struct decodes faster than a tagged union and lets the translation name the ``param``
of a block it does not serve.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from schemas.chat import NonEmptyStr, PositiveInt, TopP


class _Wire(Struct, omit_defaults=True, forbid_unknown_fields=True):
    """Request side: an unknown parameter is a 400 naming it, not silently dropped."""


class _Lenient(Struct, omit_defaults=True):
    """Blocks clients echo back from earlier answers (``citations``, ``cache_control``)."""


class ImageSource(_Lenient):
    type: str  # base64, url
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ContentBlock(_Lenient):
    type: str  # text, image, tool_use, tool_result, thinking, redacted_thinking, document
    text: str | None = None
    source: ImageSource | None = None  # image
    id: str | None = None  # tool_use
    name: str | None = None
    input: Any = None
    tool_use_id: str | None = None  # tool_result
    content: str | list[ContentBlock] | None = None
    is_error: bool | None = None


class MessageParam(_Lenient):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class ToolParam(_Lenient):
    name: NonEmptyStr
    input_schema: dict[str, Any]
    description: str | None = None
    type: str | None = None  # "custom", or a server tool's type (refused)


class ToolChoice(_Wire):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class RequestMetadata(_Wire):
    user_id: str | None = None


class MessagesRequest(_Wire):
    model: NonEmptyStr
    max_tokens: PositiveInt
    messages: Annotated[list[MessageParam], Meta(min_length=1)]
    system: str | list[ContentBlock] | None = None
    stop_sequences: Annotated[list[str], Meta(max_length=4)] | None = None
    stream: bool | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    top_p: TopP | None = None
    top_k: Annotated[int, Meta(ge=1)] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    metadata: RequestMetadata | None = None
    service_tier: str | None = None
    # Refused when set (docs/apis.md): accepted so the 400 names them.
    thinking: Any = None
    container: Any = None
    mcp_servers: Any = None


# ---------------------------------------------------------------- the message object


class OutputBlock(Struct, omit_defaults=True):
    type: Literal["text", "tool_use"]
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class MessageUsage(Struct):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Message(Struct):
    id: str
    model: str
    content: list[OutputBlock]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"] | None
    usage: MessageUsage
    stop_sequence: str | None = None
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"


class AnthropicErrorDetail(Struct, omit_defaults=True):
    type: str
    message: str
    param: str | None = None  # not Anthropic's: which field, as promptbus's OpenAI errors say


class AnthropicError(Struct):
    error: AnthropicErrorDetail
    type: Literal["error"] = "error"


messages_request_decoder = msgspec.json.Decoder(MessagesRequest)
