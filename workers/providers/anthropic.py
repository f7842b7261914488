"""Anthropic Messages API (``POST /v1/messages``), spoken natively.

OpenAI -> Anthropic: system and developer messages become the top-level ``system``;
user content parts become ``text``, ``image`` and ``document`` blocks; an assistant's
``tool_calls`` become ``tool_use`` blocks and ``tool`` messages ``tool_result`` blocks of
the next user turn (consecutive turns of one role are merged, as the API expects);
``tools``/``tool_choice`` map to ``input_schema`` tools and ``auto|any|tool|none``;
``max_tokens`` is required, so the deployment's ``default_max_tokens`` fills it in.

Anthropic -> OpenAI: ``text`` blocks become the message content, ``tool_use`` blocks
``tool_calls``; ``stop_reason`` maps to ``finish_reason``; usage counts cache reads and
writes as prompt tokens. Stream events (``message_start``, ``content_block_start``,
``content_block_delta`` with ``text_delta``/``input_json_delta``, ``message_delta``,
``message_stop``, ``error``) become ``chat.completion.chunk`` objects.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec

from schemas.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    DeveloperMessage,
    EmbeddingList,
    EmbeddingRequest,
    FilePart,
    FunctionCall,
    FunctionMessage,
    FunctionTool,
    ImageURLPart,
    InputAudioPart,
    PromptTokensDetails,
    ResponseFormatText,
    ResponseMessage,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolMessage,
    UnknownFields,
    Usage,
    UserContentPart,
    UserMessage,
    encoder,
)
from schemas.config import DeploymentConfig
from schemas.errors import BrokerError, ErrorDetail, upstream_error
from workers.providers import translate as t
from workers.providers.base import WithoutTextCompletions
from workers.providers.errors import classify
from workers.providers.http import Upstream, decode_answer

PROVIDER = "Anthropic"
ANTHROPIC_VERSION = "2023-06-01"

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# The HTTP status of each error type, for errors that arrive inside a 200 stream.
ERROR_STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


# ---------------------------------------------------------------- wire structs (responses)


class AnthropicUsage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None

    def openai(self) -> Usage:
        cached = self.cache_read_input_tokens or 0
        prompt = self.input_tokens + cached + (self.cache_creation_input_tokens or 0)
        details = PromptTokensDetails(cached_tokens=cached) if cached else None
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=self.output_tokens,
            total_tokens=prompt + self.output_tokens,
            prompt_tokens_details=details,
        )


class AnthropicMessage(msgspec.Struct):
    id: str
    model: str
    content: list[dict[str, Any]]
    type: str = "message"
    role: str = "assistant"
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: AnthropicUsage = msgspec.field(default_factory=AnthropicUsage)


class AnthropicErrorInfo(msgspec.Struct):
    type: str
    message: str


class AnthropicError(msgspec.Struct):
    error: AnthropicErrorInfo
    type: str = "error"


class StreamEvent(msgspec.Struct):
    """Every stream event type in one lenient struct: unknown types are skipped."""

    type: str
    index: int = 0
    message: AnthropicMessage | None = None
    content_block: dict[str, Any] | None = None
    delta: dict[str, Any] | None = None
    usage: AnthropicUsage | None = None
    error: AnthropicErrorInfo | None = None


message_decoder = msgspec.json.Decoder(AnthropicMessage)
error_decoder = msgspec.json.Decoder(AnthropicError)
event_decoder = msgspec.json.Decoder(StreamEvent)


# ---------------------------------------------------------------- request


def _image_block(part: ImageURLPart) -> dict[str, Any]:
    url = part.image_url.url
    data = t.parse_data_url(url)
    if data is None:
        return {"type": "image", "source": {"type": "url", "url": url}}
    media_type, payload = data
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": payload},
    }


def _user_blocks(content: str | list[UserContentPart], where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImageURLPart):
            blocks.append(_image_block(part))
        elif isinstance(part, FilePart) and part.file.file_data:
            data = t.parse_data_url(part.file.file_data)
            if data is None:
                raise t.unsupported(PROVIDER, where, "a file given other than as a data URL")
            source = {"type": "base64", "media_type": data[0], "data": data[1]}
            blocks.append({"type": "document", "source": source})
        elif isinstance(part, InputAudioPart):
            raise t.unsupported(PROVIDER, where, "audio input")
        else:
            raise t.unsupported(PROVIDER, where, "a file referenced by id")
    return blocks


def _assistant_blocks(message: AssistantMessage, where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    content = message.content
    text = (
        content
        if isinstance(content, str)
        else "".join(p.text for p in content or [] if isinstance(p, TextPart))
    )
    if text:
        blocks.append({"type": "text", "text": text})
    for call in message.tool_calls or []:
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.function.name,
                "input": t.tool_arguments(call, f"{where}.tool_calls"),
            }
        )
    return blocks


def _tool_choice(request: ChatCompletionRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    result: dict[str, Any] | None
    if choice is None:
        result = None
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    elif choice == "none":
        result = {"type": "none"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        result = {"type": "tool", "name": choice["function"].get("name", "")}
    else:
        raise t.unsupported(PROVIDER, "tool_choice", f"tool_choice {choice!r}")
    if request.parallel_tool_calls is False and request.tools:
        result = (result or {"type": "auto"}) | {"disable_parallel_tool_use": True}
    return result


def to_anthropic(
    request: ChatCompletionRequest, model: str, default_max_tokens: int
) -> dict[str, Any]:
    """The ``/v1/messages`` body for an OpenAI chat request."""
    if request.n not in (None, 1):
        raise t.unsupported(PROVIDER, "n", "more than one choice")
    if request.response_format is not None and not isinstance(
        request.response_format, ResponseFormatText
    ):
        raise t.unsupported(PROVIDER, "response_format", "a JSON response format")
    t.refuse_openai_only(request, PROVIDER)
    system: list[str] = []
    turns = t.Turns("content")
    add = turns.add

    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        if isinstance(message, SystemMessage | DeveloperMessage):
            text = t.text_of(message.content)
            if text:
                system.append(text)
        elif isinstance(message, UserMessage):
            add("user", _user_blocks(message.content, f"{where}.content"))
        elif isinstance(message, AssistantMessage):
            add("assistant", _assistant_blocks(message, where))
        elif isinstance(message, ToolMessage):
            result = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": t.text_of(message.content),
            }
            add("user", [result])
        elif isinstance(message, FunctionMessage):
            raise t.unsupported(PROVIDER, f"{where}.role", "the legacy `function` role")
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_completion_tokens or request.max_tokens or default_max_tokens,
        "messages": turns.turns,
    }
    if system:
        body["system"] = "\n\n".join(system)
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop is not None:
        body["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    if request.tools:
        body["tools"] = [
            {
                "name": tool.function.name,
                **({"description": tool.function.description} if tool.function.description else {}),
                "input_schema": tool.function.parameters or {"type": "object", "properties": {}},
            }
            for tool in request.tools
            if isinstance(tool, FunctionTool)
        ]
        if len(body["tools"]) != len(request.tools):
            raise t.unsupported(PROVIDER, "tools", "a custom (non-function) tool")
    choice = _tool_choice(request)
    if choice is not None:
        body["tool_choice"] = choice
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if request.stream:
        body["stream"] = True
    return body


# ---------------------------------------------------------------- response


def _tool_call(block: dict[str, Any]) -> ToolCall:
    return ToolCall(
        id=str(block.get("id", "")),
        type="function",
        function=FunctionCall(
            name=str(block.get("name", "")), arguments=t.json_text(block.get("input", {}))
        ),
    )


def from_anthropic(message: AnthropicMessage) -> ChatCompletion:
    text = "".join(b.get("text", "") for b in message.content if b.get("type") == "text")
    calls = [_tool_call(b) for b in message.content if b.get("type") == "tool_use"]
    reply = ResponseMessage(content=text or None, tool_calls=calls or None)
    finish = FINISH_REASONS.get(message.stop_reason or "", "stop")
    return ChatCompletion(
        id=message.id,
        created=t.now(),
        model=message.model,
        choices=[Choice(index=0, message=reply, finish_reason=finish)],
        usage=message.usage.openai(),
    )


class StreamTranslator:
    """Anthropic stream events in, OpenAI chunks out; one per streamed request."""

    def __init__(self, deployment: str, model: str, include_usage: bool) -> None:
        self._deployment = deployment
        self._include_usage = include_usage
        self._id = ""
        self._model = model
        self._created = t.now()
        self._tools: dict[int, int] = {}  # content block index -> tool call index
        self._usage = AnthropicUsage()
        self.done = False

    def _chunk(self, **fields: Any) -> ChatCompletionChunk:
        return t.chunk(self._id, self._model, self._created, **fields)

    def feed(self, event: StreamEvent) -> list[ChatCompletionChunk]:
        kind = event.type
        if kind == "message_start" and event.message is not None:
            self._id, self._model = event.message.id, event.message.model
            self._usage = event.message.usage
            return [self._chunk(role="assistant", content="")]
        if kind == "content_block_start" and event.content_block is not None:
            block = event.content_block
            if block.get("type") == "tool_use":
                index = self._tools[event.index] = len(self._tools)
                call = ToolCallDelta(
                    index=index,
                    id=str(block.get("id", "")),
                    type="function",
                    function={"name": block.get("name", ""), "arguments": ""},
                )
                return [self._chunk(tool_calls=[call])]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk(content=block["text"])]
            return []
        if kind == "content_block_delta" and event.delta is not None:
            delta = event.delta
            if delta.get("type") == "text_delta":
                return [self._chunk(content=delta.get("text", ""))]
            if delta.get("type") == "input_json_delta" and event.index in self._tools:
                call = ToolCallDelta(
                    index=self._tools[event.index],
                    function={"arguments": delta.get("partial_json", "")},
                )
                return [self._chunk(tool_calls=[call])]
            return []  # thinking, signatures, citations: no OpenAI equivalent
        if kind == "message_delta":
            if event.usage is not None:
                self._usage.output_tokens = event.usage.output_tokens
            reason = (event.delta or {}).get("stop_reason")
            finish = FINISH_REASONS.get(reason or "", "stop")
            return [self._chunk(finish_reason=finish)]
        if kind == "message_stop":
            self.done = True
            if self._include_usage:
                return [t.usage_chunk(self._id, self._model, self._created, self._usage.openai())]
            return []
        if kind == "error" and event.error is not None:
            status = ERROR_STATUSES.get(event.error.type, 500)
            detail = ErrorDetail(event.error.message, event.error.type, code=event.error.type)
            raise classify(self._deployment, status, b"", detail=detail)
        return []  # ping and future event types


# ---------------------------------------------------------------- provider


class AnthropicProvider(WithoutTextCompletions):
    api_name = PROVIDER

    def __init__(self, deployment: DeploymentConfig, api_key: str | None) -> None:
        self.name = deployment.name
        self._deployment = deployment
        self._model = deployment.model or deployment.name
        self._upstream = Upstream(deployment, self._http_error)
        self._url = f"{self._upstream.base_url}/v1/messages"
        self._headers = {
            "Content-Type": "application/json",
            "anthropic-version": deployment.api_version or ANTHROPIC_VERSION,
        }
        if api_key:
            self._headers["x-api-key"] = api_key

    def _request_headers(self, traceparent: str | None, stream: bool) -> dict[str, str]:
        headers = self._headers
        if stream:
            headers = headers | {"Accept": "text/event-stream"}
        if traceparent is not None:
            headers = headers | {"traceparent": traceparent}
        return headers

    def _body(self, request: ChatCompletionRequest) -> bytes:
        return encoder.encode(
            to_anthropic(request, self._model, self._deployment.default_max_tokens)
        )

    def _http_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> BrokerError:
        try:
            info = error_decoder.decode(body).error
        except (msgspec.ValidationError, msgspec.DecodeError):
            return classify(self.name, status, body, headers)
        detail = ErrorDetail(info.message, info.type, code=info.type)
        return classify(self.name, status, body, headers, detail=detail)

    forwards_unknown_fields = False  # refused with a 400 naming the field

    async def complete(
        self,
        request: ChatCompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> bytes:
        headers = self._request_headers(traceparent, False)
        answer = await self._upstream.post(self._url, self._body(request), headers)
        message = decode_answer(message_decoder, answer, self.name, "response body")
        return encoder.encode(from_anthropic(message))

    async def stream(
        self,
        request: ChatCompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> AsyncIterator[bytes]:
        options = request.stream_options
        translator = StreamTranslator(
            self.name, self._model, bool(options and options.include_usage)
        )
        headers = self._request_headers(traceparent, True)
        events = self._upstream.post_events(self._url, self._body(request), headers)
        async with contextlib.aclosing(events):
            async for data in events:
                event = decode_answer(event_decoder, data, self.name, "stream event")
                for chunk in translator.feed(event):
                    yield encoder.encode(chunk)
                if translator.done:
                    return
        raise upstream_error(
            502, self.name, "the stream ended before message_stop", code="upstream_transport_error"
        )

    async def embed(
        self, request: EmbeddingRequest, traceparent: str | None = None
    ) -> EmbeddingList:
        raise t.unsupported(PROVIDER, "model", "embeddings")

    async def aclose(self) -> None:
        await self._upstream.aclose()
