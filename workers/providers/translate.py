"""Pieces every translating adapter (Anthropic, Gemini) needs: OpenAI content read back
into plain values, and the 400 for what a provider cannot express."""

from __future__ import annotations

import mimetypes
import time
from typing import Any

import msgspec

from schemas.chat import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Delta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from schemas.errors import BrokerError, invalid_request


def text_of(content: str | list[TextPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:<media-type>;base64,<data>`` as (media type, base64 data); None otherwise."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not sep or encoding != "base64" or not media_type:
        raise invalid_request(
            "Image and file data URLs must be base64: `data:<media-type>;base64,<data>`.",
            param="messages",
            code="invalid_value",
        )
    return media_type, data


def guess_media_type(url: str, default: str = "image/jpeg") -> str:
    return mimetypes.guess_type(url.split("?", 1)[0])[0] or default


def unsupported(provider: str, param: str, what: str) -> BrokerError:
    """A request feature the provider's API has no equivalent for: refused, not dropped."""
    return invalid_request(
        f"`{param}`: {what} is not supported by the {provider} API this model is served by.",
        param=param,
        code="unsupported_parameter",
    )


def refuse_openai_only(request: ChatCompletionRequest, provider: str) -> None:
    """The 400 for what neither Anthropic nor Gemini can do."""
    if request.logprobs:
        raise unsupported(provider, "logprobs", "log probabilities")
    if request.audio is not None or (request.modalities and "audio" in request.modalities):
        raise unsupported(provider, "modalities", "audio output")
    if request.functions or request.function_call:
        raise unsupported(provider, "functions", "legacy `functions` (use `tools`)")


class Turns:
    """A conversation in a provider's shape, where consecutive items of one role must be
    one turn: ``{"role": ..., <key>: [items]}``, merged as they are added."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.turns: list[dict[str, Any]] = []

    def add(self, role: str, items: list[dict[str, Any]]) -> None:
        if not items:
            return
        if self.turns and self.turns[-1]["role"] == role:
            self.turns[-1][self.key].extend(items)
        else:
            self.turns.append({"role": role, self.key: items})


def tool_arguments(call: ToolCall, where: str) -> Any:
    """The JSON object an assistant's tool call carried as a string."""
    try:
        return msgspec.json.decode(call.function.arguments or "{}")
    except msgspec.DecodeError:
        raise invalid_request(
            f"Tool call `{call.id}` has arguments that are not JSON.",
            param=where,
            code="invalid_value",
        ) from None


def json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def chunk(
    id: str,
    model: str,
    created: int,
    *,
    role: str | None = None,
    content: str | None = None,
    tool_calls: list[ToolCallDelta] | None = None,
    finish_reason: str | None = None,
    index: int = 0,
) -> ChatCompletionChunk:
    delta = Delta(role=role, content=content, tool_calls=tool_calls)
    choice = ChunkChoice(index=index, delta=delta, finish_reason=finish_reason)
    return ChatCompletionChunk(id=id, created=created, model=model, choices=[choice])


def usage_chunk(id: str, model: str, created: int, usage: Usage) -> ChatCompletionChunk:
    """The last chunk of a stream with ``stream_options.include_usage``: no choices."""
    return ChatCompletionChunk(id=id, created=created, model=model, choices=[], usage=usage)


def now() -> int:
    return int(time.time())
