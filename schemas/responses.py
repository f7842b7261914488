"""OpenAI Responses API (``POST /v1/responses``): the request, the response object and
its stream events, as much of them as promptbus serves (docs/apis.md).

Input items and content parts are flat Structs with a ``type`` rather than tagged
unions: OpenAI lets a message item leave out ``type``, which a tagged union cannot, and
one flat Struct decodes faster than a union of ten. ``broker/responses/translation.py``
checks each item's required fields as it translates it, naming the ``param``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from schemas.chat import Int64, NonEmptyStr, PositiveInt, Temperature, TopP


class _Wire(Struct, omit_defaults=True, forbid_unknown_fields=True):
    """Request side: unknown fields are refused (400 naming them), not ignored: a
    parameter promptbus would silently drop is a parameter the caller thinks it set."""


class _Lenient(Struct, omit_defaults=True):
    """Request side, for what clients echo back from earlier responses (items carry
    ``status``, ``annotations``, ``logprobs`` ...): extra fields are ignored."""


class ContentPart(_Lenient):
    type: str
    text: str | None = None  # input_text, output_text
    image_url: str | None = None  # input_image
    detail: Literal["auto", "low", "high"] | None = None
    file_id: str | None = None
    file_data: str | None = None  # input_file
    file_url: str | None = None
    filename: str | None = None
    refusal: str | None = None


class InputItem(_Lenient):
    """One item of ``input``: a message (``type`` may be left out), a function call
    the model made, or its output."""

    type: str = "message"
    role: str | None = None  # message: user, assistant, system, developer
    content: str | list[ContentPart] | None = None
    id: str | None = None
    call_id: str | None = None  # function_call, function_call_output
    name: str | None = None  # function_call
    arguments: str | None = None
    output: str | list[ContentPart] | None = None  # function_call_output
    status: str | None = None  # echoed by clients; "completed" in a stored input list


class FunctionToolParam(_Lenient):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None  # json_schema
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextParam(_Wire):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningParam(_Wire):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: str | None = None  # deprecated alias of summary


class ResponseStreamOptions(_Wire):
    include_obfuscation: bool | None = None


class ResponseRequest(_Wire):
    model: NonEmptyStr
    input: NonEmptyStr | Annotated[list[InputItem], Meta(min_length=1)]
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool | None = None  # None: true, as OpenAI
    stream: bool | None = None
    stream_options: ResponseStreamOptions | None = None
    tools: list[FunctionToolParam] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    reasoning: ReasoningParam | None = None
    max_output_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    metadata: Annotated[dict[str, str], Meta(max_length=16)] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    seed: Int64 | None = None  # not OpenAI's; passed to chat upstreams that take it
    # Refused with a 400 when set (docs/apis.md says why): accepted here so the
    # refusal names the parameter instead of calling it unknown.
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    max_tool_calls: int | None = None


# ---------------------------------------------------------------- the response object


class OutputContent(Struct, omit_defaults=True):
    """``output_text`` (text, annotations, logprobs) or ``refusal``."""

    type: Literal["output_text", "refusal"]
    text: str | None = None
    annotations: list[dict[str, Any]] | None = None
    logprobs: list[dict[str, Any]] | None = None
    refusal: str | None = None


class OutputItem(Struct, omit_defaults=True):
    """A ``message`` or a ``function_call`` of the response's ``output``."""

    type: Literal["message", "function_call"]
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] | None = None  # message
    content: list[OutputContent] | None = None
    call_id: str | None = None  # function_call
    name: str | None = None
    arguments: str | None = None


class InputTokensDetails(Struct):
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # the openai SDK's Response type requires it


class OutputTokensDetails(Struct):
    reasoning_tokens: int = 0


class ResponseUsage(Struct):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)


class IncompleteDetails(Struct):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(Struct):
    code: str
    message: str


class Response(Struct):
    """The ``response`` object: what ``client.responses.create`` returns."""

    id: str
    created_at: int
    model: str
    output: list[OutputItem]
    status: Literal["completed", "incomplete", "failed", "in_progress"]
    object: Literal["response"] = "response"
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = {}
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] = {}
    store: bool = True
    temperature: float | None = None
    text: dict[str, Any] = {}
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = []
    top_p: float | None = None
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None


class ListedItem(InputItem):
    """An input item as OpenAI lists it back: ``type`` always said, ``id`` and
    ``status`` set."""

    type: str


class InputItemList(Struct):
    """``GET /v1/responses/{id}/input_items``: a page of the response's input items."""

    data: list[ListedItem]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


class DeletedResponse(Struct):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


response_request_decoder = msgspec.json.Decoder(ResponseRequest)


# ---------------------------------------------------------------- from upstreams


class ResponseShape(Struct):
    """What an upstream's response object must have to be relayed (the rest is passed
    on as the upstream sent it: reasoning items, built-in tool calls ...)."""

    id: str
    output: list[dict[str, Any]]
    status: str
    object: Literal["response"] = "response"


class EventHead(Struct):
    """A stream event's type and order; the rest is passed on as it came."""

    type: str
    sequence_number: int = 0


class _Details(Struct):
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


class UpstreamUsage(Struct):
    """An upstream's ``usage``, read leniently: details may be null or missing."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: _Details | None = None
    output_tokens_details: _Details | None = None


class _Usage(Struct):
    usage: UpstreamUsage | None = None


class _UsageCarrier(Struct):
    usage: UpstreamUsage | None = None  # a response object
    response: _Usage | None = None  # response.completed and its kin


response_shape_decoder = msgspec.json.Decoder(ResponseShape)
event_head_decoder = msgspec.json.Decoder(EventHead)
_usage_carrier_decoder = msgspec.json.Decoder(_UsageCarrier)


def usage_in(body: bytes) -> UpstreamUsage | None:
    """The usage a response object, or a stream's closing event, reports."""
    carrier = _usage_carrier_decoder.decode(body)
    if carrier.usage is not None:
        return carrier.usage
    return carrier.response.usage if carrier.response is not None else None
