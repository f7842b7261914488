"""Anthropic's Messages API as chat completions, and back (docs/apis.md).

Like the Responses API, a Messages request travels the bus as the chat request it means
(one queue, one set of limits); the answer or its chunks are turned into Anthropic's
message object and stream events here. Pure functions and one small state machine.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import msgspec

from schemas.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    FunctionCall,
    FunctionDefinition,
    FunctionTool,
    ImageURL,
    ImageURLPart,
    Message,
    StreamOptions,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolMessage,
    UnknownFields,
    Usage,
    UserContentPart,
    UserMessage,
)
from schemas.errors import BrokerError, invalid_request
from schemas.messages import (
    AnthropicError,
    AnthropicErrorDetail,
    ContentBlock,
    MessageParam,
    MessagesRequest,
    MessageUsage,
    OutputBlock,
)
from schemas.messages import Message as AnthropicMessage

_REFUSED = {
    "thinking": "extended thinking is not translated onto chat completions",
    "container": "code execution containers are not served",
    "mcp_servers": "MCP servers are not served",
}
_SKIPPED_BLOCKS = {"thinking", "redacted_thinking"}  # a chat upstream has no use for them
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# Anthropic's error types by HTTP status (its SDK raises by status; the type is for people)
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def _refuse(message: str, param: str, code: str = "unsupported_parameter") -> BrokerError:
    return invalid_request(message, param=param, code=code)


def anthropic_error(exc: BrokerError) -> AnthropicError:
    """An error in Anthropic's shape (``{"type": "error", "error": {...}}``)."""
    kind = _ERROR_TYPES.get(
        exc.status, "api_error" if exc.status >= 500 else "invalid_request_error"
    )
    detail = exc.detail
    return AnthropicError(AnthropicErrorDetail(kind, detail.message, detail.param))


# ---------------------------------------------------------------- request


def _block_text(block: ContentBlock, param: str) -> str:
    if block.text is None:
        raise _refuse("A text block needs `text`.", f"{param}.text", "missing_required")
    return block.text


def _texts(content: str | list[ContentBlock] | None, param: str) -> str:
    """Text-only content (system, tool results): the text blocks joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for index, block in enumerate(content):
        where = f"{param}[{index}]"
        if block.type != "text":
            raise _refuse(f"Only text blocks are served here, not `{block.type}`.", f"{where}.type")
        parts.append(_block_text(block, where))
    return "\n".join(parts)


def _image(block: ContentBlock, param: str) -> ImageURLPart:
    source = block.source
    if source is not None and source.type == "base64" and source.data and source.media_type:
        return ImageURLPart(ImageURL(f"data:{source.media_type};base64,{source.data}"))
    if source is not None and source.type == "url" and source.url:
        return ImageURLPart(ImageURL(source.url))
    raise _refuse("An image's source is base64 (media_type and data) or a url.", f"{param}.source")


def _user(content: list[ContentBlock], param: str) -> list[Message]:
    """A user turn: its tool results first (chat wants them right after the calls),
    then what the user said."""
    results: list[Message] = []
    parts: list[UserContentPart] = []
    for index, block in enumerate(content):
        where = f"{param}[{index}]"
        if block.type == "text":
            parts.append(TextPart(_block_text(block, where)))
        elif block.type == "image":
            parts.append(_image(block, where))
        elif block.type == "tool_result":
            if not block.tool_use_id:
                raise _refuse(
                    "A tool_result block needs `tool_use_id`.",
                    f"{where}.tool_use_id",
                    "missing_required",
                )
            text = _texts(block.content, f"{where}.content")
            results.append(
                ToolMessage(f"Error: {text}" if block.is_error else text, block.tool_use_id)
            )
        elif block.type in _SKIPPED_BLOCKS:
            continue
        else:
            raise _refuse(
                f"Content blocks of type `{block.type}` are not served (text, image, "
                "tool_use and tool_result are).",
                f"{where}.type",
            )
    if parts:
        results.append(UserMessage(parts))
    return results


def _assistant(content: list[ContentBlock], param: str) -> AssistantMessage:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for index, block in enumerate(content):
        where = f"{param}[{index}]"
        if block.type == "text":
            texts.append(_block_text(block, where))
        elif block.type == "tool_use":
            if not block.id or not block.name:
                raise _refuse("A tool_use block needs `id` and `name`.", where, "missing_required")
            arguments = json.dumps(block.input if block.input is not None else {})
            calls.append(ToolCall(block.id, "function", FunctionCall(block.name, arguments)))
        elif block.type in _SKIPPED_BLOCKS:
            continue
        else:
            raise _refuse(
                f"An assistant turn's blocks are text and tool_use, not `{block.type}`.",
                f"{where}.type",
            )
    return AssistantMessage(content="".join(texts) if texts else None, tool_calls=calls or None)


def _messages(turns: list[MessageParam]) -> list[Message]:
    messages: list[Message] = []
    for index, turn in enumerate(turns):
        param = f"messages[{index}].content"
        if isinstance(turn.content, str):
            messages.append(
                UserMessage(turn.content)
                if turn.role == "user"
                else AssistantMessage(content=turn.content)
            )
        elif turn.role == "user":
            messages += _user(turn.content, param)
        else:
            messages.append(_assistant(turn.content, param))
    return messages


def _tools(request: MessagesRequest) -> list[FunctionTool] | None:
    if request.tools is None:
        return None
    tools = []
    for index, tool in enumerate(request.tools):
        if tool.type not in (None, "custom"):
            raise _refuse(
                f"Server tools (`{tool.type}`) are not served; client tools are.",
                f"tools[{index}].type",
            )
        tools.append(
            FunctionTool(FunctionDefinition(tool.name, tool.description, tool.input_schema))
        )
    return tools


def _tool_choice(request: MessagesRequest) -> str | dict[str, Any] | None:
    choice = request.tool_choice
    if choice is None:
        return None
    if choice.type == "tool":
        if not choice.name:
            raise _refuse(
                "tool_choice `tool` needs `name`.", "tool_choice.name", "missing_required"
            )
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def to_chat(request: MessagesRequest) -> ChatCompletionRequest:
    """The chat request a Messages request means."""
    for name, why in _REFUSED.items():
        if getattr(request, name) is not None:
            raise _refuse(f"`{name}` is not supported: {why}.", name)
    messages: list[Message] = []
    if request.system:
        messages.append(SystemMessage(_texts(request.system, "system")))
    messages += _messages(request.messages)
    choice = request.tool_choice
    return ChatCompletionRequest(
        model=request.model,
        messages=messages,
        max_tokens=request.max_tokens,
        stop=request.stop_sequences,
        stream=True if request.stream else None,
        stream_options=StreamOptions(include_usage=True) if request.stream else None,
        temperature=request.temperature,
        top_p=request.top_p,
        tools=_tools(request),  # type: ignore[arg-type]
        tool_choice=_tool_choice(request),  # type: ignore[arg-type]
        parallel_tool_calls=False if choice and choice.disable_parallel_tool_use else None,
        user=request.metadata.user_id if request.metadata else None,
        service_tier=request.service_tier,
    )


def extra_fields(request: MessagesRequest) -> UnknownFields:
    """What chat does not define but OpenAI-compatible upstreams take (``top_k``): sent
    as the caller's unknown fields are (native adapters refuse them, naming them)."""
    if request.top_k is None:
        return {}
    return {"top_k": msgspec.Raw(msgspec.json.encode(request.top_k))}


# ---------------------------------------------------------------- response


def _input(arguments: str) -> Any:
    """A tool call's arguments as the ``input`` object Anthropic clients expect."""
    try:
        return json.loads(arguments) if arguments else {}
    except ValueError:
        return {"arguments": arguments}  # not JSON: kept, under a name of its own


def _usage(usage: Usage | None) -> MessageUsage:
    if usage is None:
        return MessageUsage(0, 0)
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else None
    return MessageUsage(
        usage.prompt_tokens - (cached or 0), usage.completion_tokens, 0, cached or 0
    )


def to_message(completion: ChatCompletion) -> AnthropicMessage:
    """The message object of a chat completion's first choice."""
    blocks: list[OutputBlock] = []
    choice = completion.choices[0] if completion.choices else None
    finish = choice.finish_reason if choice else None
    if choice is not None:
        text = choice.message.content or choice.message.refusal
        if text:
            blocks.append(OutputBlock("text", text=text))
        for call in choice.message.tool_calls or []:
            blocks.append(
                OutputBlock(
                    "tool_use",
                    id=call.id,
                    name=call.function.name,
                    input=_input(call.function.arguments),
                )
            )
    return AnthropicMessage(
        id=new_message_id(),
        model=completion.model,
        content=blocks,
        stop_reason=STOP_REASONS.get(finish or "stop", "end_turn"),  # type: ignore[arg-type]
        usage=_usage(completion.usage),
    )


# ---------------------------------------------------------------- stream

Event = dict[str, Any]


class MessageEvents:
    """Chat chunks in, Anthropic's stream events out: ``message_start``, then per content
    block ``content_block_start``, its deltas and ``content_block_stop``, then
    ``message_delta`` (stop reason, usage) and ``message_stop``."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = new_message_id()
        self._index = -1
        self._open: str | None = None  # "text", or "tool:<chat tool call index>"
        self._finish: str | None = None
        self._usage: Usage | None = None

    def start(self) -> list[Event]:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        self._open = None
        return [{"type": "content_block_stop", "index": self._index}]

    def _begin(self, kind: str, block: dict[str, Any]) -> list[Event]:
        events = self._close()
        self._index += 1
        self._open = kind
        events.append({"type": "content_block_start", "index": self._index, "content_block": block})
        return events

    def chunk(self, chunk: ChatCompletionChunk) -> list[Event]:
        events: list[Event] = []
        if chunk.model:
            self.model = chunk.model
        if chunk.usage is not None:
            self._usage = chunk.usage
        for choice in chunk.choices[:1] if chunk.choices else ():
            delta = choice.delta
            if choice.finish_reason:
                self._finish = choice.finish_reason
            text = delta.content or delta.refusal
            if text:
                if self._open != "text":
                    events += self._begin("text", {"type": "text", "text": ""})
                events.append(
                    {
                        "type": "content_block_delta",
                        "index": self._index,
                        "delta": {"type": "text_delta", "text": text},
                    }
                )
            for call in delta.tool_calls or []:
                function = call.function or {}
                kind = f"tool:{call.index}"
                if self._open != kind:
                    block = {
                        "type": "tool_use",
                        "id": call.id or f"toolu_{uuid.uuid4().hex}",
                        "name": str(function.get("name") or ""),
                        "input": {},
                    }
                    events += self._begin(kind, block)
                arguments = str(function.get("arguments") or "")
                if arguments:
                    events.append(
                        {
                            "type": "content_block_delta",
                            "index": self._index,
                            "delta": {"type": "input_json_delta", "partial_json": arguments},
                        }
                    )
        return events

    def finish(self) -> list[Event]:
        usage = _usage(self._usage)
        return [
            *self._close(),
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": STOP_REASONS.get(self._finish or "stop", "end_turn"),
                    "stop_sequence": None,
                },
                "usage": {
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                    "cache_read_input_tokens": usage.cache_read_input_tokens,
                },
            },
            {"type": "message_stop"},
        ]
