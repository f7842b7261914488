"""The Responses API as chat completions, and back (docs/apis.md).

A deployment whose upstream has no Responses API (``responses_api: chat``) serves a
Responses request as the chat request it means, and its answer (or its chunks) as a
``response`` object (or its typed stream events): the worker does it per deployment
(``broker/responses/chat_turn.py``). Pure functions and one small state machine: no I/O.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from schemas.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionTokensDetails,
    DeveloperMessage,
    FilePart,
    FileRef,
    FunctionCall,
    FunctionDefinition,
    FunctionTool,
    ImageURL,
    ImageURLPart,
    JSONSchema,
    Message,
    PromptTokensDetails,
    ResponseFormat,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    StreamOptions,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolMessage,
    Usage,
    UserContentPart,
    UserMessage,
)
from schemas.errors import BrokerError, invalid_request
from schemas.responses import (
    ContentPart,
    IncompleteDetails,
    InputItem,
    InputTokensDetails,
    ListedItem,
    OutputContent,
    OutputItem,
    OutputTokensDetails,
    Response,
    ResponseRequest,
    ResponseUsage,
    UpstreamUsage,
)

# Parameters promptbus does not serve, and why (each a 400 naming it).
_REFUSED = {
    "background": "background responses are not served: stream it or wait for it",
    "conversation": "conversations are not kept: chain responses with previous_response_id",
    "prompt": "stored prompt templates are not served: send the input itself",
    "max_tool_calls": "built-in tools are not served, so there are no tool calls to cap",
}
_ROLES = {"user", "assistant", "system", "developer"}
_SKIPPED_ITEMS = {"reasoning"}  # a chat upstream has no use for them; they are dropped


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _refuse(message: str, param: str, code: str = "unsupported_parameter") -> BrokerError:
    return invalid_request(message, param=param, code=code)


# ---------------------------------------------------------------- request

_ITEM_ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}


def input_items(request: ResponseRequest) -> list[ListedItem]:
    """The request's input as OpenAI lists it back: a string as a user message, text
    content as parts, every item with an id and ``status: completed``."""
    if isinstance(request.input, str):
        items = [InputItem(role="user", content=request.input)]
    else:
        items = request.input
    listed = []
    for item in items:
        content = item.content
        if isinstance(content, str):
            kind = "output_text" if item.role == "assistant" else "input_text"
            content = [ContentPart(type=kind, text=content)]
        prefix = _ITEM_ID_PREFIXES.get(item.type, "item")
        fields = msgspec.structs.asdict(item)
        fields |= {"content": content, "id": item.id or new_id(prefix), "status": "completed"}
        listed.append(ListedItem(**fields))
    return listed


def check_supported(request: ResponseRequest) -> None:
    """400 for what a Responses request may say but promptbus does not serve."""
    for name, why in _REFUSED.items():
        value = getattr(request, name)
        if value is not None and value is not False:
            raise _refuse(f"`{name}` is not supported: {why}.", name)


def _text(part: ContentPart, param: str) -> str:
    if part.text is None:
        raise _refuse(f"A `{part.type}` part needs `text`.", f"{param}.text", "missing_required")
    return part.text


def _user_part(part: ContentPart, param: str) -> UserContentPart:
    if part.type in ("input_text", "output_text"):
        return TextPart(_text(part, param))
    if part.type == "input_image":
        if part.image_url is None:
            raise _refuse(
                "Only images given by `image_url` (a URL or a data: URL) are supported; "
                "file_id images are not.",
                f"{param}.image_url",
            )
        return ImageURLPart(ImageURL(part.image_url, part.detail))
    if part.type == "input_file":
        if part.file_data is None:
            raise _refuse(
                "Only files given inline as `file_data` are supported.", f"{param}.file_data"
            )
        return FilePart(FileRef(file_data=part.file_data, filename=part.filename))
    raise _refuse(f"Content parts of type `{part.type}` are not supported.", f"{param}.type")


def _plain_text(content: str | list[ContentPart] | None, param: str) -> str:
    """System, developer and assistant content: text parts only."""
    if content is None:
        raise _refuse("A message needs `content`.", param, "missing_required")
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        if part.type == "refusal":
            texts.append(part.refusal or "")
        elif part.type in ("input_text", "output_text"):
            texts.append(_text(part, where))
        else:
            raise _refuse(f"This role's content takes text only, not `{part.type}`.", where)
    return "".join(texts)


def _message(item: InputItem, param: str) -> Message:
    role = item.role
    if role not in _ROLES:
        raise _refuse(
            f"A message's role is one of {', '.join(sorted(_ROLES))}.",
            f"{param}.role",
            "invalid_value",
        )
    content = item.content
    if role == "user":
        if content is None:
            raise _refuse("A message needs `content`.", f"{param}.content", "missing_required")
        if isinstance(content, str):
            return UserMessage(content)
        parts = [_user_part(p, f"{param}.content[{i}]") for i, p in enumerate(content)]
        return UserMessage(parts)
    text = _plain_text(content, f"{param}.content")
    if role == "assistant":
        return AssistantMessage(content=text)
    if role == "system":
        return SystemMessage(text)
    return DeveloperMessage(text)


def _required(item: InputItem, field: str, param: str) -> str:
    value = getattr(item, field)
    if not isinstance(value, str):
        raise _refuse(
            f"A `{item.type}` item needs `{field}`.", f"{param}.{field}", "missing_required"
        )
    return value


def input_messages(request: ResponseRequest) -> list[Message]:
    """``input`` as chat messages (function calls folded into their assistant turn)."""
    if isinstance(request.input, str):
        return [UserMessage(request.input)]
    messages: list[Message] = []
    for index, item in enumerate(request.input):
        param = f"input[{index}]"
        if item.type == "message":
            messages.append(_message(item, param))
        elif item.type == "function_call":
            call = ToolCall(
                _required(item, "call_id", param),
                "function",
                FunctionCall(_required(item, "name", param), item.arguments or "{}"),
            )
            last = messages[-1] if messages else None
            if isinstance(last, AssistantMessage):  # one turn may call several tools
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                messages.append(AssistantMessage(tool_calls=[call]))
        elif item.type == "function_call_output":
            output = item.output
            if output is None:
                raise _refuse(
                    "A `function_call_output` item needs `output`.",
                    f"{param}.output",
                    "missing_required",
                )
            text = output if isinstance(output, str) else _plain_text(output, f"{param}.output")
            messages.append(ToolMessage(text, _required(item, "call_id", param)))
        elif item.type in _SKIPPED_ITEMS:
            continue
        else:
            raise _refuse(
                f"Input items of type `{item.type}` are not supported (message, "
                "function_call and function_call_output are).",
                f"{param}.type",
            )
    if not messages:
        raise _refuse("`input` has no message to answer.", "input", "invalid_value")
    return messages


def _tools(request: ResponseRequest) -> list[FunctionTool] | None:
    if request.tools is None:
        return None
    tools = []
    for index, tool in enumerate(request.tools):
        if tool.type != "function":
            raise _refuse(
                f"Tools of type `{tool.type}` (built-in tools) are not served; function tools are.",
                f"tools[{index}].type",
            )
        if not tool.name:
            raise _refuse(
                "A function tool needs `name`.", f"tools[{index}].name", "missing_required"
            )
        definition = FunctionDefinition(tool.name, tool.description, tool.parameters, tool.strict)
        tools.append(FunctionTool(definition))
    return tools


def _tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _refuse("`tool_choice` is none, auto, required or {type: function, name}.", "tool_choice")


def _response_format(request: ResponseRequest) -> ResponseFormat | None:
    form = request.text.format if request.text else None
    if form is None or form.type == "text":
        return None
    if form.type == "json_object":
        return ResponseFormatJSONObject()
    if not form.name:
        raise _refuse("A json_schema format needs `name`.", "text.format.name", "missing_required")
    return ResponseFormatJSONSchema(
        JSONSchema(form.name, form.description, form.schema, form.strict)
    )


def to_chat(request: ResponseRequest) -> ChatCompletionRequest:
    """The chat request a stateless Responses request means: ``instructions`` first,
    then the conversation (``input``; broker/responses/conversation.py)."""
    check_supported(request)
    messages: list[Message] = []
    if request.instructions:
        messages.append(SystemMessage(request.instructions))
    messages += input_messages(request)
    reasoning = request.reasoning
    return ChatCompletionRequest(
        model=request.model,
        messages=messages,
        max_completion_tokens=request.max_output_tokens,
        metadata=request.metadata,
        parallel_tool_calls=request.parallel_tool_calls,
        prompt_cache_key=request.prompt_cache_key,
        reasoning_effort=reasoning.effort if reasoning else None,
        response_format=_response_format(request),
        safety_identifier=request.safety_identifier,
        seed=request.seed,
        service_tier=request.service_tier,
        stream=True if request.stream else None,
        stream_options=StreamOptions(include_usage=True) if request.stream else None,
        temperature=request.temperature,
        tool_choice=_tool_choice(request.tool_choice),  # type: ignore[arg-type]
        tools=_tools(request),  # type: ignore[arg-type]
        top_logprobs=request.top_logprobs,
        logprobs=True if request.top_logprobs else None,
        top_p=request.top_p,
        user=request.user,
        verbosity=request.text.verbosity if request.text else None,
    )


# ---------------------------------------------------------------- response


def _usage(usage: Usage | None) -> ResponseUsage | None:
    if usage is None:
        return None
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else None
    reasoning = (
        usage.completion_tokens_details.reasoning_tokens
        if usage.completion_tokens_details
        else None
    )
    return ResponseUsage(
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
        InputTokensDetails(cached or 0),
        OutputTokensDetails(reasoning or 0),
    )


def chat_usage(usage: UpstreamUsage) -> Usage:
    """A Responses upstream's usage as chat counts it (what metering and costs take)."""
    inputs, outputs = usage.input_tokens_details, usage.output_tokens_details
    cached = inputs.cached_tokens if inputs else None
    reasoning = outputs.reasoning_tokens if outputs else None
    return Usage(
        usage.input_tokens,
        usage.output_tokens,
        usage.total_tokens or usage.input_tokens + usage.output_tokens,
        PromptTokensDetails(cached_tokens=cached) if cached is not None else None,
        CompletionTokensDetails(reasoning_tokens=reasoning) if reasoning is not None else None,
    )


def _status(finish_reason: str | None) -> tuple[str, IncompleteDetails | None]:
    if finish_reason == "length":
        return "incomplete", IncompleteDetails("max_output_tokens")
    if finish_reason == "content_filter":
        return "incomplete", IncompleteDetails("content_filter")
    return "completed", None


def shell(request: ResponseRequest, response_id: str, created_at: int) -> Response:
    """The response as the request shaped it, before any output: what ``response.created``
    carries, and what the finished response fills in."""
    form = request.text.format if request.text else None
    text: dict[str, Any] = {"format": msgspec.to_builtins(form) if form else {"type": "text"}}
    if request.text and request.text.verbosity:
        text["verbosity"] = request.text.verbosity
    reasoning = msgspec.to_builtins(request.reasoning) if request.reasoning else {}
    return Response(
        id=response_id,
        created_at=created_at,
        model=request.model,
        output=[],
        status="in_progress",
        instructions=request.instructions,
        max_output_tokens=request.max_output_tokens,
        metadata=request.metadata or {},
        parallel_tool_calls=request.parallel_tool_calls is not False,
        previous_response_id=request.previous_response_id,
        reasoning={"effort": None, "summary": None} | reasoning,
        store=request.store is not False,
        temperature=request.temperature,
        text=text,
        tool_choice=request.tool_choice or "auto",
        tools=[msgspec.to_builtins(t) for t in request.tools or []],
        top_p=request.top_p,
        truncation=request.truncation or "disabled",
        user=request.user,
    )


def to_response(completion: ChatCompletion, base: Response) -> Response:
    """The finished response: ``base`` (``shell``) with the completion's first choice."""
    output: list[OutputItem] = []
    choice = completion.choices[0] if completion.choices else None
    finish = choice.finish_reason if choice else None
    if choice is not None:
        message = choice.message
        if message.content or message.refusal:
            content = (
                OutputContent("refusal", refusal=message.refusal)
                if message.refusal and not message.content
                else OutputContent("output_text", text=message.content, annotations=[], logprobs=[])
            )
            output.append(OutputItem("message", new_id("msg"), "completed", "assistant", [content]))
        for call in message.tool_calls or []:
            output.append(
                OutputItem(
                    "function_call",
                    new_id("fc"),
                    "completed",
                    call_id=call.id,
                    name=call.function.name,
                    arguments=call.function.arguments,
                )
            )
    status, incomplete = _status(finish)
    return msgspec.structs.replace(
        base,
        model=completion.model or base.model,
        output=output,
        status=status,
        incomplete_details=incomplete,
        usage=_usage(completion.usage),
    )


# ---------------------------------------------------------------- stream

Event = dict[str, Any]


class ResponseEvents:
    """Chat chunks in, the Responses stream's typed events out, in the order the openai
    SDK's ``responses.stream`` checks: created, in_progress, then per output item
    ``output_item.added``, its deltas and ``...done`` events, and ``response.completed``
    (``response.incomplete`` when cut off by ``max_output_tokens``)."""

    def __init__(self, base: Response) -> None:
        self.base = base
        self._sequence = 0
        self._items: list[OutputItem] = []
        self._open: OutputItem | None = None
        self._tool_items: dict[int, OutputItem] = {}
        self._finish: str | None = None
        self._usage: Usage | None = None
        self._model = base.model

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def start(self) -> list[Event]:
        snapshot = msgspec.to_builtins(self.base)
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def _index(self, item: OutputItem) -> int:
        return self._items.index(item)

    def _close_open(self) -> list[Event]:
        item, self._open = self._open, None
        if item is None:
            return []
        index = self._index(item)
        item.status = "completed"
        events: list[Event] = []
        if item.type == "message":
            part = item.content[0] if item.content else OutputContent("output_text", text="")
            events.append(
                self._event(
                    "response.output_text.done",
                    item_id=item.id,
                    output_index=index,
                    content_index=0,
                    text=part.text or "",
                    logprobs=[],
                )
            )
            events.append(
                self._event(
                    "response.content_part.done",
                    item_id=item.id,
                    output_index=index,
                    content_index=0,
                    part=msgspec.to_builtins(part),
                )
            )
        else:
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=index,
                    name=item.name,
                    arguments=item.arguments or "",
                )
            )
        events.append(
            self._event(
                "response.output_item.done", output_index=index, item=msgspec.to_builtins(item)
            )
        )
        return events

    def _add(self, item: OutputItem) -> list[Event]:
        events = self._close_open()
        self._items.append(item)
        self._open = item
        added = msgspec.structs.replace(item, content=[] if item.type == "message" else None)
        events.append(
            self._event(
                "response.output_item.added",
                output_index=self._index(item),
                item=msgspec.to_builtins(added),
            )
        )
        return events

    def chunk(self, chunk: ChatCompletionChunk) -> list[Event]:
        events: list[Event] = []
        self._model = chunk.model or self._model
        if chunk.usage is not None:
            self._usage = chunk.usage
        for choice in chunk.choices[:1] if chunk.choices else ():
            delta = choice.delta
            if choice.finish_reason:
                self._finish = choice.finish_reason
            text = delta.content or delta.refusal
            if text:
                item = self._open
                if item is None or item.type != "message":
                    part = OutputContent("output_text", text="", annotations=[], logprobs=[])
                    item = OutputItem("message", new_id("msg"), "in_progress", "assistant", [part])
                    events += self._add(item)
                    events.append(
                        self._event(
                            "response.content_part.added",
                            item_id=item.id,
                            output_index=self._index(item),
                            content_index=0,
                            part=msgspec.to_builtins(part),
                        )
                    )
                content = item.content[0]  # type: ignore[index]
                content.text = (content.text or "") + text
                events.append(
                    self._event(
                        "response.output_text.delta",
                        item_id=item.id,
                        output_index=self._index(item),
                        content_index=0,
                        delta=text,
                        logprobs=[],
                    )
                )
            for call in delta.tool_calls or []:
                item = self._tool_items.get(call.index)
                function = call.function or {}
                if item is None:
                    item = OutputItem(
                        "function_call",
                        new_id("fc"),
                        "in_progress",
                        call_id=call.id or new_id("call"),
                        name=str(function.get("name") or ""),
                        arguments="",
                    )
                    self._tool_items[call.index] = item
                    events += self._add(item)
                arguments = str(function.get("arguments") or "")
                if arguments:
                    item.arguments = (item.arguments or "") + arguments
                    events.append(
                        self._event(
                            "response.function_call_arguments.delta",
                            item_id=item.id,
                            output_index=self._index(item),
                            delta=arguments,
                        )
                    )
        return events

    def finish(self) -> list[Event]:
        """The closing events; ``self.response`` is the finished response after it."""
        events = self._close_open()
        status, incomplete = _status(self._finish)
        self.response = msgspec.structs.replace(
            self.base,
            model=self._model,
            output=self._items,
            status=status,
            incomplete_details=incomplete,
            usage=_usage(self._usage),
        )
        kind = "response.completed" if status == "completed" else "response.incomplete"
        events.append(self._event(kind, response=msgspec.to_builtins(self.response)))
        return events

    def error(self, exc: BrokerError) -> list[Event]:
        """A failure mid-stream: an ``error`` event, then ``response.failed``."""
        detail = exc.detail
        failed = msgspec.to_builtins(
            msgspec.structs.replace(self.base, output=self._items, status="failed")
        )
        failed["error"] = {"code": detail.code or "server_error", "message": detail.message}
        return [
            self._event("error", code=detail.code, message=detail.message, param=detail.param),
            self._event("response.failed", response=failed),
        ]


def created_now() -> int:
    return int(time.time())
